//! Fault control commands of the hub: a tiny text protocol over UDP on the
//! control port, one command per datagram, one reply line per command.
//!
//! `isolate N` · `cut A B` · `partition 1,2/3,4,5` · `drop PERCENT` ·
//! `heal` · `show` · `garbage FROM TO COUNT`

use std::collections::BTreeSet;
use std::fmt;

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultCommand {
    /// Cut every link of node N (its gateway link stays up).
    Isolate(u8),
    /// Cut the link between two nodes (both directions).
    Cut(u8, u8),
    /// Cut every link between different groups.
    Partition(Vec<Vec<u8>>),
    /// Drop this percentage of node-to-node frames (0 stops dropping).
    Drop(u8),
    /// Restore every link and stop dropping.
    Heal,
    /// Report the current faults.
    Show,
    /// Send `count` garbage datagrams to node `to`'s Raft port, forged as
    /// coming from node `from` (a peer speaking garbage).
    Garbage {
        /// Claimed sender.
        from: u8,
        /// Target.
        to: u8,
        /// How many (at most [`MAX_GARBAGE_DATAGRAMS`]).
        count: u16,
    },
}

/// Most garbage datagrams one command sends.
pub const MAX_GARBAGE_DATAGRAMS: u16 = 1000;

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultParseError {
    /// Not a known command.
    Unknown(String),
    /// Wrong number of arguments.
    Arity(&'static str),
    /// Not a node id of this cluster.
    BadNode(String),
    /// Percentage not in 0..=100.
    BadPercent(String),
    /// A node appears in two groups, or fewer than two groups.
    BadPartition,
    /// A count out of range.
    BadCount(String),
}

impl fmt::Display for FaultParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultParseError::Unknown(c) => write!(
                f,
                "unknown command {c:?} (isolate, cut, partition, drop, heal, show, garbage)"
            ),
            FaultParseError::Arity(usage) => write!(f, "usage: {usage}"),
            FaultParseError::BadNode(s) => write!(f, "not a node id of this cluster: {s:?}"),
            FaultParseError::BadPercent(s) => write!(f, "not a percentage 0..=100: {s:?}"),
            FaultParseError::BadPartition => {
                f.write_str("partition needs two or more disjoint groups, e.g. 1,2/3,4,5")
            }
            FaultParseError::BadCount(s) => {
                write!(f, "not a count 1..={MAX_GARBAGE_DATAGRAMS}: {s:?}")
            }
        }
    }
}

impl std::error::Error for FaultParseError {}

fn node(s: &str, nodes: u8) -> Result<u8, FaultParseError> {
    match s.parse::<u8>() {
        Ok(id) if (1..=nodes).contains(&id) => Ok(id),
        _ => Err(FaultParseError::BadNode(s.to_string())),
    }
}

impl FaultCommand {
    /// Parses one command for a cluster of `nodes` nodes.
    pub fn parse(line: &str, nodes: u8) -> Result<FaultCommand, FaultParseError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["isolate", n] => Ok(FaultCommand::Isolate(node(n, nodes)?)),
            ["isolate", ..] => Err(FaultParseError::Arity("isolate N")),
            ["cut", a, b] => {
                let (a, b) = (node(a, nodes)?, node(b, nodes)?);
                if a == b {
                    return Err(FaultParseError::BadNode(a.to_string()));
                }
                Ok(FaultCommand::Cut(a, b))
            }
            ["cut", ..] => Err(FaultParseError::Arity("cut A B")),
            ["partition", groups] => {
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                for g in groups.split('/') {
                    let mut group = Vec::new();
                    for n in g.split(',') {
                        let id = node(n, nodes)?;
                        if !seen.insert(id) {
                            return Err(FaultParseError::BadPartition);
                        }
                        group.push(id);
                    }
                    out.push(group);
                }
                if out.len() < 2 {
                    return Err(FaultParseError::BadPartition);
                }
                Ok(FaultCommand::Partition(out))
            }
            ["partition", ..] => Err(FaultParseError::Arity("partition 1,2/3,4,5")),
            ["drop", p] => match p.trim_end_matches('%').parse::<u8>() {
                Ok(v) if v <= 100 => Ok(FaultCommand::Drop(v)),
                _ => Err(FaultParseError::BadPercent(p.to_string())),
            },
            ["drop", ..] => Err(FaultParseError::Arity("drop PERCENT")),
            ["garbage", from, to, count] => {
                let (from, to) = (node(from, nodes)?, node(to, nodes)?);
                match count.parse::<u16>() {
                    Ok(c) if (1..=MAX_GARBAGE_DATAGRAMS).contains(&c) => {
                        Ok(FaultCommand::Garbage { from, to, count: c })
                    }
                    _ => Err(FaultParseError::BadCount(count.to_string())),
                }
            }
            ["garbage", ..] => Err(FaultParseError::Arity("garbage FROM TO COUNT")),
            ["heal"] => Ok(FaultCommand::Heal),
            ["show"] => Ok(FaultCommand::Show),
            _ => Err(FaultParseError::Unknown(line.trim().to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            FaultCommand::parse("isolate 3", 5),
            Ok(FaultCommand::Isolate(3))
        );
        assert_eq!(
            FaultCommand::parse("cut 1 2", 5),
            Ok(FaultCommand::Cut(1, 2))
        );
        assert_eq!(
            FaultCommand::parse("drop 30%", 5),
            Ok(FaultCommand::Drop(30))
        );
        assert_eq!(
            FaultCommand::parse("partition 1,2/3,4,5", 5),
            Ok(FaultCommand::Partition(vec![vec![1, 2], vec![3, 4, 5]]))
        );
        assert!(matches!(
            FaultCommand::parse("isolate 6", 5),
            Err(FaultParseError::BadNode(_))
        ));
        assert!(matches!(
            FaultCommand::parse("cut 1 1", 5),
            Err(FaultParseError::BadNode(_))
        ));
        assert!(matches!(
            FaultCommand::parse("drop 101", 5),
            Err(FaultParseError::BadPercent(_))
        ));
        assert_eq!(
            FaultCommand::parse("partition 1,2/2,3", 5),
            Err(FaultParseError::BadPartition)
        );
        assert_eq!(
            FaultCommand::parse("partition 1,2", 5),
            Err(FaultParseError::BadPartition)
        );
        assert!(matches!(
            FaultCommand::parse("reboot", 5),
            Err(FaultParseError::Unknown(_))
        ));
    }
}
