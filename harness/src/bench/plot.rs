//! `--plot FILE.svg`: throughput (top) and p99 reply latency (bottom) against piece size,
//! one line per connection count and kind of profile (back to back solid, paced
//! dashed), with the `whole` baseline as a dotted horizontal line.
//!
//! Medians of the valid runs; a profile with no valid run leaves a gap in its line.

use std::path::Path;

use plotters::prelude::*;

use super::results::{BenchReport, Row, Stat};

/// Picture size in pixels.
const WIDTH: u32 = 900;
const HEIGHT: u32 = 760;

/// Which figure of a row a panel shows.
type Metric = fn(&Row) -> Option<Stat>;

/// Why the plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    #[error("nothing to plot: no split or paced profile has a valid run")]
    Empty,
    #[error("cannot draw the plot: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// The SVG text of the plot.
pub fn svg(report: &BenchReport) -> Result<String, PlotError> {
    let pieces: Vec<usize> = report.rows.iter().filter_map(|r| r.piece).collect();
    if pieces.is_empty() {
        return Err(PlotError::Empty);
    }
    let x_min = *pieces.iter().min().expect("non-empty") as f64;
    let x_max = (*pieces.iter().max().expect("non-empty") as f64).max(x_min * 2.0);
    let mut conns: Vec<usize> = report.rows.iter().map(|r| r.connections).collect();
    conns.sort_unstable();
    conns.dedup();

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(HEIGHT / 2);
        let panels: [(&DrawingArea<_, _>, &str, Metric); 2] = [
            (&top, "messages/s", |r| r.msgs_per_s),
            (&bottom, "p99 reply latency (µs)", |r| r.p99_us),
        ];
        for (i, (area, label, metric)) in panels.into_iter().enumerate() {
            let y_max = report
                .rows
                .iter()
                .filter_map(|r| metric(r).map(|s| s.median))
                .fold(0.0f64, f64::max)
                .max(1.0)
                * 1.1;
            let caption = if i == 0 {
                format!(
                    "chopstick bench: {} ({}, {} B messages, depth {})",
                    report.target, report.framing, report.size, report.depth
                )
            } else {
                String::new()
            };
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc("piece size (bytes)")
                .y_desc(label)
                .draw()
                .map_err(draw_err)?;
            for (ci, &c) in conns.iter().enumerate() {
                let color = Palette99::pick(ci).to_rgba();
                for paced in [false, true] {
                    let mut pts: Vec<(f64, f64)> = report
                        .rows
                        .iter()
                        .filter(|r| r.connections == c && r.paced == paced)
                        .filter_map(|r| Some((r.piece? as f64, metric(r)?.median)))
                        .collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    if pts.is_empty() {
                        continue;
                    }
                    let name = format!(
                        "{c} conn{}, {}",
                        if c == 1 { "" } else { "s" },
                        if paced { "paced" } else { "back to back" }
                    );
                    let style = color.stroke_width(2);
                    let series = if paced {
                        chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                    } else {
                        chart.draw_series(LineSeries::new(pts.clone(), style))
                    }
                    .map_err(draw_err)?;
                    series.label(name).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(draw_err)?;
                }
                if let Some(w) = report.row("whole", c).and_then(metric) {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(x_min, w.median), (x_max, w.median)],
                            2,
                            4,
                            color.stroke_width(1),
                        ))
                        .map_err(draw_err)?
                        .label(format!("{c} conn{}, whole", if c == 1 { "" } else { "s" }))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
                        });
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

/// Draws the plot and writes it to `path` (whole or not at all).
pub fn write(report: &BenchReport, path: &Path) -> Result<(), PlotError> {
    let text = svg(report)?;
    crate::report::write_atomic(path, text.as_bytes()).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}
