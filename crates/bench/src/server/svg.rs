//! Two small hand-written SVG charts (no fonts or plotting crates needed):
//! a line chart over categories and a latency CDF on a log axis.

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Series colours, in order (etcd, metalraft).
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

pub struct Series {
    pub name: String,
    /// One value per category; NaN for a failed point.
    pub values: Vec<f64>,
}

fn header(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 × 10^k at or above `x`.
fn nice_max(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

fn legend(s: &mut String, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 12.0 + 18.0 * i as f64;
        let x = LEFT + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x + 20.0,
            COLOURS[i % COLOURS.len()],
            x + 26.0,
            y + 4.0,
            esc(n)
        );
    }
}

/// Lines over evenly spaced categories, y from 0.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    cats: &[String],
    series: &[Series],
) -> String {
    let mut s = header(title);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|x| x.values.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max),
    );
    let xpos = |i: usize| LEFT + pw * (i as f64 + 0.5) / cats.len() as f64;
    let ypos = |v: f64| TOP + ph * (1.0 - v / ymax);
    axes(&mut s, x_label, y_label);
    for t in 0..=5 {
        let v = ymax * t as f64 / 5.0;
        let y = ypos(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    for (i, c) in cats.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            xpos(i),
            H - BOTTOM + 18.0,
            esc(c)
        );
    }
    for (k, se) in series.iter().enumerate() {
        let col = COLOURS[k % COLOURS.len()];
        let pts: Vec<String> = se
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| format!("{:.1},{:.1}", xpos(i), ypos(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{col}" stroke-width="2.5" points="{}"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap();
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="4" fill="{col}"/>"#);
        }
    }
    let names: Vec<&str> = series.iter().map(|x| x.name.as_str()).collect();
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, x_label: &str, y_label: &str) {
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="black"/><line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<text x="{cx}" y="{xl}" text-anchor="middle">{}</text>
<text x="18" y="{cy}" text-anchor="middle" transform="rotate(-90 18 {cy})">{}</text>"#,
        esc(x_label),
        esc(y_label),
        b = H - BOTTOM,
        r = W - RIGHT,
        cx = LEFT + (W - LEFT - RIGHT) / 2.0,
        xl = H - 18.0,
        cy = TOP + (H - TOP - BOTTOM) / 2.0,
    );
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Latency CDFs: x = latency (ms, log10 axis), y = fraction of operations.
/// `samples` are sorted microseconds.
pub fn cdf_chart(title: &str, series: &[(String, &[u32])]) -> String {
    let mut s = header(title);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let lo_us = all.clone().filter(|&x| x > 0).min().unwrap_or(1).max(1);
    let hi_us = all.max().unwrap_or(10).max(lo_us * 10);
    let lo = 10f64.powf((f64::from(lo_us) / 1000.0).log10().floor());
    let hi = 10f64.powf((f64::from(hi_us) / 1000.0).log10().ceil());
    let (llo, lhi) = (lo.log10(), hi.log10());
    let xpos = |ms: f64| LEFT + pw * ((ms.max(lo).log10() - llo) / (lhi - llo));
    let ypos = |f: f64| TOP + ph * (1.0 - f);
    axes(
        &mut s,
        "latency (ms, log scale)",
        "fraction of operations ≤ latency",
    );
    let mut d = llo;
    while d <= lhi + 1e-9 {
        let ms = 10f64.powf(d);
        let x = xpos(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0,
            trim_ms(ms)
        );
        d += 1.0;
    }
    for t in 0..=4 {
        let f = t as f64 / 4.0;
        let y = ypos(f);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{f:.2}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (k, (_, v)) in series.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        // At most ~400 points: every n-th sample plus the last.
        let step = (v.len() / 400).max(1);
        let mut pts = Vec::new();
        let mut i = 0;
        while i < v.len() {
            let f = (i + 1) as f64 / v.len() as f64;
            pts.push(format!(
                "{:.1},{:.1}",
                xpos(f64::from(v[i]) / 1000.0),
                ypos(f)
            ));
            i += step;
        }
        pts.push(format!(
            "{:.1},{:.1}",
            xpos(f64::from(v[v.len() - 1]) / 1000.0),
            ypos(1.0)
        ));
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            COLOURS[k % COLOURS.len()],
            pts.join(" ")
        );
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

fn trim_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        let s = format!("{ms:.3}");
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let l = line_chart(
            "t",
            "x",
            "y",
            &["1".into(), "16".into()],
            &[Series {
                name: "a<b".into(),
                values: vec![1.0, f64::NAN],
            }],
        );
        assert!(l.starts_with("<svg") && l.ends_with("</svg>\n"));
        assert!(l.contains("a&lt;b"));
        let v = [100u32, 200, 5000];
        let c = cdf_chart("c", &[("x".into(), &v[..])]);
        assert!(c.contains("<polyline"));
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(12_000.0), 20_000.0);
    }
}
