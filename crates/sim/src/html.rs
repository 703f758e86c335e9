//! A self-contained HTML/SVG timeline of one run.
/// Renders the run (placeholder).
pub fn render(_r: &crate::RunReport) -> String {
    String::new()
}
