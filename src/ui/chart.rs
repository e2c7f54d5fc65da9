//! Usage charts as server-rendered SVG (SPEC §14): stacked bars per bucket,
//! one colour per outcome, with a legend and the same figures as a table
//! for screen readers and for anyone who would rather read numbers. No
//! script, no inline style (the pages' CSP forbids it): colours come from
//! classes in `app.css`.

use std::collections::BTreeMap;

use maud::{Markup, html};

use crate::manage::history::Series;
use crate::manage::series::Granularity;

/// Outcomes drawn with their own colour, besides `ok`; the rest are
/// summed as "other refusals".
const NAMED: usize = 4;

/// Drawing size (the SVG scales to its container).
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 12.0;
const RIGHT: f64 = 28.0;

/// One coloured series of the chart.
struct Layer {
    name: String,
    class: &'static str,
    values: Vec<u64>,
}

/// One drawn rectangle.
struct Bar {
    class: &'static str,
    x: f64,
    y: f64,
    height: f64,
    title: String,
}

/// The chart of `series`, titled `title` (its accessible name).
pub fn usage_chart(title: &str, series: &Series) -> Markup {
    let layers = layers(series);
    let totals: Vec<u64> = series.points.iter().map(|p| p.total).collect();
    let max = totals.iter().copied().max().unwrap_or(0);
    let top = nice_ceiling(max);
    let count = series.points.len().max(1);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - BOTTOM - TOP;
    let step = plot_width / count as f64;
    let bar = (step * 0.8).max(1.0);
    let y = |v: u64| TOP + plot_height - (v as f64 / top as f64) * plot_height;
    let sum: u64 = totals.iter().sum();
    let mut rects = Vec::new();
    for (i, point) in series.points.iter().enumerate() {
        let x = LEFT + i as f64 * step + (step - bar) / 2.0;
        let mut base = 0_u64;
        for layer in &layers {
            let v = layer.values[i];
            if v > 0 {
                rects.push(Bar {
                    class: layer.class,
                    x,
                    y: y(base + v),
                    height: y(base) - y(base + v),
                    title: format!(
                        "{}: {v} {}",
                        label(point.time, series.range.granularity),
                        layer.name
                    ),
                });
            }
            base += v;
        }
    }
    let summary = format!(
        "{title}: {sum} requests from {} to {}, per {}; peak {max}.",
        series.range.from.format("%Y-%m-%d %H:%M UTC"),
        series.range.to.format("%Y-%m-%d %H:%M UTC"),
        series.range.granularity
    );
    html! {
        figure.chart {
            svg viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(summary) {
                title { (summary) }
                @for tick in [0, top / 2, top] {
                    line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(tick)) y2=(y(tick)) {}
                    text.axis x=(LEFT - 6.0) y=(y(tick) + 4.0) text-anchor="end" { (compact(tick)) }
                }
                @for rect in &rects {
                    rect class=(rect.class) x=(rect.x) width=(bar) y=(rect.y) height=(rect.height) {
                        title { (rect.title) }
                    }
                }
                @for (i, point) in series.points.iter().enumerate() {
                    @if i % label_every(count) == 0 {
                        text.axis x=(LEFT + (i as f64 + 0.5) * step) y=(HEIGHT - 6.0) text-anchor="middle" { (label(point.time, series.range.granularity)) }
                    }
                }
            }
            figcaption {
                ul.legend {
                    @for layer in &layers {
                        li { span class={"swatch " (layer.class)} aria-hidden="true" {} (layer.name) ": " (layer.values.iter().sum::<u64>()) }
                    }
                }
                details {
                    summary { "Show the figures" }
                    table {
                        thead { tr { th scope="col" { "Time (UTC)" } th scope="col" { "Total" } @for layer in &layers { th scope="col" { (layer.name) } } } }
                        tbody {
                            @for (i, point) in series.points.iter().enumerate() {
                                @if point.total > 0 {
                                    tr { th scope="row" { (label(point.time, series.range.granularity)) } td { (point.total) } @for layer in &layers { td { (layer.values[i]) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `ok`, then the busiest refusal codes, then the rest summed.
fn layers(series: &Series) -> Vec<Layer> {
    let mut by_code: BTreeMap<&str, u64> = BTreeMap::new();
    for point in &series.points {
        for (code, n) in &point.by_outcome {
            if code != "ok" {
                *by_code.entry(code).or_default() += n;
            }
        }
    }
    let mut codes: Vec<(&str, u64)> = by_code.into_iter().collect();
    codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let named: Vec<&str> = codes.iter().take(NAMED).map(|(c, _)| *c).collect();
    let value = |code: &str| -> Vec<u64> {
        series
            .points
            .iter()
            .map(|p| p.by_outcome.get(code).copied().unwrap_or(0))
            .collect()
    };
    let mut layers = vec![Layer {
        name: "ok".into(),
        class: "o-ok",
        values: value("ok"),
    }];
    const CLASSES: [&str; NAMED] = ["o-1", "o-2", "o-3", "o-4"];
    for (code, class) in named.iter().zip(CLASSES) {
        layers.push(Layer {
            name: (*code).to_owned(),
            class,
            values: value(code),
        });
    }
    if codes.len() > NAMED {
        let values = series
            .points
            .iter()
            .map(|p| {
                p.by_outcome
                    .iter()
                    .filter(|(code, _)| *code != "ok" && !named.contains(&code.as_str()))
                    .map(|(_, n)| n)
                    .sum()
            })
            .collect();
        layers.push(Layer {
            name: "other refusals".into(),
            class: "o-other",
            values,
        });
    }
    layers
}

/// The smallest "round" number (1, 2 or 5 × 10^n) at or above `max`, at
/// least 1.
fn nice_ceiling(max: u64) -> u64 {
    let mut unit = 1_u64;
    loop {
        for m in [1, 2, 5] {
            let candidate = unit.saturating_mul(m);
            if candidate >= max || candidate == u64::MAX {
                return candidate.max(1);
            }
        }
        unit = unit.saturating_mul(10);
    }
}

/// `n` in a few characters: 950, 1.2k, 3.4M.
pub fn compact(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => format!("{:.1}k", n as f64 / 1e3).replace(".0k", "k"),
        _ => format!("{:.1}M", n as f64 / 1e6).replace(".0M", "M"),
    }
}

/// A bucket's label at its granularity.
fn label(at: chrono::DateTime<chrono::Utc>, granularity: Granularity) -> String {
    match granularity {
        Granularity::Minute => at.format("%H:%M").to_string(),
        Granularity::Hour => at.format("%d %H:00").to_string(),
        Granularity::Day => at.format("%b %d").to_string(),
    }
}

/// Every how many buckets an axis label fits (about eight labels).
fn label_every(count: usize) -> usize {
    count.div_ceil(8).max(1)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::manage::series::SeriesRange;

    fn series() -> Series {
        let range = SeriesRange {
            granularity: Granularity::Hour,
            from: Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap(),
            to: Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, 0).unwrap(),
        };
        let at = |h| Utc.with_ymd_and_hms(2026, 12, 7, h, 0, 0).unwrap();
        let points = range.fill([
            (at(0), "ok".to_owned(), 10),
            (at(0), "rate_limited".to_owned(), 5),
            (at(2), "ok".to_owned(), 40),
            (at(2), "invalid_key".to_owned(), 1),
        ]);
        Series { range, points }
    }

    #[test]
    fn bars_stack_by_outcome_with_a_legend_and_a_table() {
        let html = usage_chart("Requests", &series()).into_string();
        assert!(html.contains("role=\"img\""), "{html}");
        assert!(
            html.contains("Requests: 56 requests from 2026-12-07 00:00 UTC"),
            "{html}"
        );
        // ok, then refusals by volume.
        let legend = html.split("class=\"legend\"").nth(1).unwrap();
        let ok = legend.find("ok: 50").unwrap();
        let limited = legend.find("rate_limited: 5").unwrap();
        let invalid = legend.find("invalid_key: 1").unwrap();
        assert!(ok < limited && limited < invalid, "{legend}");
        // Three stacked rectangles in bucket 0 and 2, none in the empty one.
        assert_eq!(html.matches("<rect").count(), 4, "{html}");
        assert!(!html.contains("style="), "no inline style under the CSP");
        // The table lists only buckets with traffic.
        assert_eq!(html.matches("<th scope=\"row\">").count(), 2, "{html}");
    }

    #[test]
    fn an_empty_series_draws_an_axis_and_no_bars() {
        let mut empty = series();
        for point in &mut empty.points {
            point.total = 0;
            point.by_outcome.clear();
        }
        let html = usage_chart("Requests", &empty).into_string();
        assert_eq!(html.matches("<rect").count(), 0);
        assert!(html.contains("0 requests"), "{html}");
    }

    #[test]
    fn round_ceilings_and_compact_numbers() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(430), 500);
        assert_eq!(compact(950), "950");
        assert_eq!(compact(1_000), "1k");
        assert_eq!(compact(1_250), "1.2k");
        assert_eq!(compact(3_400_000), "3.4M");
    }
}
