//! Inline SVG line charts, drawn on the server so they show without JavaScript.
use maud::{Markup, PreEscaped, html};

/// One line: a name, a colour and its values (one per x step; `None` leaves a gap).
pub(super) struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub values: Vec<Option<f64>>,
}

const W: f64 = 600.0;
const H: f64 = 150.0;
const PAD: f64 = 24.0;

/// A chart of `series` over `labels` (first and last shown on the x axis), with the
/// y axis from zero to the largest value.
pub(super) fn line_chart(title: &str, unit: &str, labels: (&str, &str), series: &[Series<'_>]) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0).max(2);
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / max;
    let mut paths = String::new();
    for s in series {
        let mut d = String::new();
        let mut pen_up = true;
        let mut dots = String::new();
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => {
                    d.push_str(&format!("{}{:.1},{:.1} ", if pen_up { "M" } else { "L" }, x(i), y(*v)));
                    // A point between gaps draws no line: mark it so it shows.
                    let alone = s.values.get(i.wrapping_sub(1)).is_none_or(Option::is_none)
                        && s.values.get(i + 1).is_none_or(Option::is_none);
                    if alone {
                        dots.push_str(&format!(
                            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                            x(i),
                            y(*v),
                            s.color
                        ));
                    }
                    pen_up = false;
                }
                None => pen_up = true,
            }
        }
        paths.push_str(&dots);
        paths.push_str(&format!(
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.5"><title>{}</title></path>"#,
            s.color,
            html! { (s.name) }.into_string()
        ));
    }
    html! {
        div.card {
            strong { (title) } " " span.muted { "(max " (fmt_num(max)) " " (unit) ")" }
            svg.chart viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img" aria-label=(title) {
                line x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) stroke="#ccd" {}
                text x=(PAD) y=(H - 6.0) { (labels.0) }
                text x=(W - PAD) y=(H - 6.0) text-anchor="end" { (labels.1) }
                text x="2" y=(PAD - 8.0) { (fmt_num(max)) }
                (PreEscaped(paths))
            }
            div.legend {
                @for s in series {
                    span { span.sw style=(format!("background:{}", s.color)) {} (s.name) }
                }
            }
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Colours for per-queue lines, cycled.
pub(super) const PALETTE: [&str; 8] = [
    "#1f5fbf", "#b3261e", "#1e7d32", "#a15c00", "#6a3fb5", "#00838f", "#c2185b", "#5d6675",
];
