//! A self-contained HTML page with an SVG timeline of one run: one lane per
//! node (role and term over time, crashes, pauses), a lane of partitions,
//! and one lane per client (each operation from invocation to completion,
//! coloured by outcome). Hover anything for details. No scripts, no
//! external resources.

use std::fmt::Write as _;

use metalraft_core::{NodeId, Role};

use crate::config::{Time, TICK_US_NOMINAL};
use crate::history::Outcome;
use crate::timeline::{NodeEvent, Timeline};
use crate::RunReport;

/// Horizontal pixels per tick.
pub const PX_PER_TICK: f64 = 2.0;
/// Height of a lane.
pub const LANE_PX: f64 = 22.0;
/// Width of the lane labels.
pub const LABEL_PX: f64 = 70.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn x(t: Time) -> f64 {
    LABEL_PX + t as f64 / TICK_US_NOMINAL as f64 * PX_PER_TICK
}

fn role_colour(r: Role) -> &'static str {
    match r {
        Role::Follower => "#d9d9d9",
        Role::PreCandidate => "#ffe08a",
        Role::Candidate => "#ffb347",
        Role::Leader => "#4caf50",
    }
}

fn rect(out: &mut String, x0: f64, x1: f64, y: f64, h: f64, fill: &str, title: &str) {
    let _ = write!(
        out,
        r#"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{fill}"><title>{}</title></rect>"#,
        (x1 - x0).max(1.0),
        esc(title)
    );
}

fn text(out: &mut String, x0: f64, y: f64, s: &str) {
    let _ = write!(
        out,
        r#"<text x="{x0:.1}" y="{y:.1}" font-size="11">{}</text>"#,
        esc(s)
    );
}

/// Renders `r` (which must have been run with `RunOptions::timeline`).
pub fn render(r: &RunReport) -> String {
    let empty = Timeline::default();
    let tl = r.timeline.as_ref().unwrap_or(&empty);
    let end = tl.end.max(1);
    let voters = r.config.nodes();
    let clients = r.config.workload.clients;
    let lanes = voters + 1 + clients;
    let width = x(end) + 20.0;
    let height = (lanes as f64 + 2.0) * LANE_PX;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="monospace">"#
    );
    // Tick grid every 100 ticks.
    let mut t = 0;
    while t <= end {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="0" y2="{height:.0}" stroke="#eee"/>"##,
            x(t)
        );
        text(
            &mut svg,
            x(t) + 2.0,
            height - 4.0,
            &format!("{}", t / TICK_US_NOMINAL),
        );
        t += 100 * TICK_US_NOMINAL;
    }
    // Node lanes.
    for n in 1..=voters as NodeId {
        let y = (n - 1) as f64 * LANE_PX;
        text(&mut svg, 2.0, y + 15.0, &format!("node {n}"));
        let roles: Vec<_> = tl.roles.iter().filter(|e| e.1 == n).collect();
        let downs: Vec<(Time, Option<Time>, bool)> = {
            let mut v = Vec::new();
            let mut open: Option<(Time, bool)> = None;
            for &(t, id, ev) in &tl.node_events {
                if id != n {
                    continue;
                }
                match ev {
                    NodeEvent::Crash { torn } => open = Some((t, torn)),
                    NodeEvent::Restart => {
                        if let Some((t0, torn)) = open.take() {
                            v.push((t0, Some(t), torn));
                        }
                    }
                    NodeEvent::Pause(_) => {}
                }
            }
            if let Some((t0, torn)) = open {
                v.push((t0, None, torn));
            }
            v
        };
        for (i, &&(t0, _, role, term)) in roles.iter().enumerate() {
            let mut t1 = roles.get(i + 1).map_or(end, |e| e.0);
            // A crash ends the segment.
            if let Some(&(c, _, _)) = downs.iter().find(|d| d.0 >= t0 && d.0 < t1) {
                t1 = c;
            }
            let (x0, x1) = (x(t0), x(t1));
            rect(
                &mut svg,
                x0,
                x1,
                y + 2.0,
                LANE_PX - 4.0,
                role_colour(role),
                &format!("node {n}: {role:?} term {term} from {t0}us to {t1}us"),
            );
            if x1 - x0 > 24.0 {
                text(&mut svg, x0 + 2.0, y + 15.0, &format!("t{term}"));
            }
        }
        for &(t0, t1, torn) in &downs {
            let t1 = t1.unwrap_or(end);
            let title = format!(
                "node {n} down{} from {t0}us to {t1}us",
                if torn { " (torn write)" } else { "" }
            );
            rect(
                &mut svg,
                x(t0),
                x(t1),
                y + 2.0,
                LANE_PX - 4.0,
                "#e53935",
                &title,
            );
            if torn {
                text(&mut svg, x(t0) + 1.0, y + 15.0, "T");
            }
        }
        for &(t0, id, ev) in &tl.node_events {
            if let (true, NodeEvent::Pause(until)) = (id == n, ev) {
                rect(
                    &mut svg,
                    x(t0),
                    x(until),
                    y + LANE_PX - 6.0,
                    4.0,
                    "#1e88e5",
                    &format!("node {n} paused {t0}us..{until}us"),
                );
            }
        }
    }
    // Partition lane.
    let py = voters as f64 * LANE_PX;
    text(&mut svg, 2.0, py + 15.0, "network");
    for (i, (t0, p)) in tl.partitions.iter().enumerate() {
        let Some(p) = p else { continue };
        let t1 = tl
            .partitions
            .get(i + 1)
            .map_or(tl.liveness_start.unwrap_or(end), |e| e.0);
        rect(
            &mut svg,
            x(*t0),
            x(t1),
            py + 4.0,
            LANE_PX - 8.0,
            "#8e24aa",
            &format!("partition {p} from {t0}us to {t1}us"),
        );
    }
    // Client lanes.
    for c in 0..clients {
        let y = (voters + 1 + c) as f64 * LANE_PX;
        text(&mut svg, 2.0, y + 15.0, &format!("client {c}"));
        for op in r.history.ops.iter().filter(|o| o.client == c) {
            let (t1, colour) = match op.completion {
                Some((t, Outcome::Ok(_))) => (t, "#43a047"),
                Some((t, Outcome::Failed)) => (t, "#9e9e9e"),
                Some((t, Outcome::Unknown)) => (t, "#fb8c00"),
                None => (end, "#e53935"),
            };
            rect(
                &mut svg,
                x(op.invoke),
                x(t1),
                y + 5.0,
                LANE_PX - 10.0,
                colour,
                &op.to_string(),
            );
        }
    }
    if let Some(t) = tl.liveness_start {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="0" y2="{height:.0}" stroke="#000" stroke-dasharray="4"><title>faults stop: liveness phase</title></line>"##,
            x(t)
        );
    }
    svg.push_str("</svg>");
    let verdict = match &r.violation {
        None => "OK".to_string(),
        Some(v) => format!("VIOLATION: {v}"),
    };
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>metalraft-sim seed {seed}</title></head>\n\
         <body style=\"font-family:monospace\">\n<h3>seed {seed}: {verdict}</h3>\n<p>{cfg}</p>\n\
         <p>Nodes: <span style=\"background:#d9d9d9\">follower</span> <span style=\"background:#ffe08a\">pre-candidate</span> \
         <span style=\"background:#ffb347\">candidate</span> <span style=\"background:#4caf50\">leader</span> \
         <span style=\"background:#e53935\">down</span> (T: torn write) <span style=\"background:#1e88e5;color:#fff\">paused</span>; \
         network: <span style=\"background:#8e24aa;color:#fff\">partitioned</span>; clients: \
         <span style=\"background:#43a047\">ok</span> <span style=\"background:#9e9e9e\">failed</span> \
         <span style=\"background:#fb8c00\">unknown</span> <span style=\"background:#e53935\">pending</span>. \
         Dashed line: faults stop. Axis in ticks; hover for details.</p>\n\
         <div style=\"overflow-x:auto\">{svg}</div>\n</body></html>\n",
        seed = r.config.seed,
        verdict = esc(&verdict),
        cfg = esc(&r.config.summary()),
    )
}

#[cfg(test)]
mod tests {
    use crate::{run_seed, RunOptions};

    #[test]
    fn renders_every_lane_and_escapes_text() {
        let r = run_seed(
            5,
            RunOptions {
                timeline: true,
                ..RunOptions::default()
            },
        );
        let html = super::render(&r);
        assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>\n"));
        for n in 1..=r.config.nodes() {
            assert!(html.contains(&format!(">node {n}<")), "lane for node {n}");
        }
        assert!(html.contains(">client 0<"));
        assert!(html.contains("fill=\"#4caf50\""), "a leader segment");
        assert!(
            !html.contains("Some(") || html.contains("&"),
            "text is escaped"
        );
        assert_eq!(super::esc("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
