//! Crate-local logging macros (must be declared first in `main.rs`). Lines
//! go to the UART; the host tool keeps one log file per node.

/// Logs an informational line.
macro_rules! info {
    ($($arg:tt)*) => { $crate::platform::console::log_line("INFO", format_args!($($arg)*)) };
}

/// Logs a warning line.
macro_rules! warn {
    ($($arg:tt)*) => { $crate::platform::console::log_line("WARN", format_args!($($arg)*)) };
}

/// Logs an error line.
macro_rules! error {
    ($($arg:tt)*) => { $crate::platform::console::log_line("ERROR", format_args!($($arg)*)) };
}
