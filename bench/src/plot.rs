//! The plots, as SVG: ingest throughput against append size, and commit-latency
//! percentiles. Owns: their look. Must never: compute a figure.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::{IngestPoint, LatencySeries};

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// One labelled series: a line with a dot at each point.
fn draw_line<'a, CT>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    data: Vec<(f64, f64)>,
    name: String,
    c: RGBColor,
) -> anyhow::Result<()>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .draw_series(LineSeries::new(data.clone(), c.stroke_width(2)))
        .map_err(err)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart
        .draw_series(data.into_iter().map(|p| Circle::new(p, 4, c.filled())))
        .map_err(err)?;
    Ok(())
}

/// The legend, top left.
fn finish<'a, CT>(chart: &mut ChartContext<'a, SVGBackend<'a>, CT>) -> anyhow::Result<()>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Throughput (MB/s) against append size (KiB, log2 axis).
pub fn ingest(path: &Path, points: &[IngestPoint]) -> anyhow::Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    // One evenly spaced position per measured size (they double: a log2 axis).
    let xs: Vec<f64> = (0..points.len()).map(|i| i as f64).collect();
    let (x0, x1) = (-0.3, points.len() as f64 - 0.7);
    let kibs: Vec<u64> = points.iter().map(|p| p.kib).collect();
    let ymax = points
        .iter()
        .flat_map(|p| [p.disk, p.one, p.three])
        .fold(0.0, f64::max)
        * 1.4;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Ingest throughput by append size (fsync on)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, 0.0..ymax.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("AppendRequest size (KiB)")
        .y_desc("MB/s of WAL")
        .x_labels(points.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.05 && i >= 0.0 {
                kibs.get(i as usize).map_or(String::new(), u64::to_string)
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(err)?;
    type Series = (&'static str, fn(&IngestPoint) -> f64);
    let series: [Series; 4] = [
        ("disk: seq write + fdatasync", |p| p.disk),
        ("1 safekeeper", |p| p.one),
        ("3 safekeepers, one disk", |p| p.three),
        ("disk / 3", |p| p.disk / 3.0),
    ];
    for (i, (name, f)) in series.iter().enumerate() {
        let c = COLORS[i];
        let data: Vec<(f64, f64)> = points.iter().zip(&xs).map(|(p, &x)| (x, f(p))).collect();
        draw_line(&mut chart, data, (*name).to_string(), c)?;
    }
    finish(&mut chart)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Latency percentiles (ms, log axis) of each series.
pub fn latency(path: &Path, series: &[LatencySeries]) -> anyhow::Result<()> {
    if series.is_empty() {
        return Ok(());
    }
    let labels: Vec<&str> = series[0].points.iter().map(|(l, _)| *l).collect();
    let vals = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, d)| d.as_secs_f64() * 1e3));
    let (lo, hi) = vals.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Commit latency of one small record (fsync on)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(
            -0.3f64..(labels.len() as f64 - 0.7),
            ((lo.max(1e-3)) * 0.7..hi * 1.5).log_scale(),
        )
        .map_err(err)?;
    let lbl = labels.clone();
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms (log scale)")
        .x_labels(labels.len())
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.05 && i >= 0.0 {
                lbl.get(i as usize).map_or(String::new(), |s| s.to_string())
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let data: Vec<(f64, f64)> = s
            .points
            .iter()
            .enumerate()
            .map(|(k, (_, d))| (k as f64, d.as_secs_f64() * 1e3))
            .collect();
        draw_line(&mut chart, data, s.name.clone(), c)?;
    }
    finish(&mut chart)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn both_plots_render_every_series() {
        let dir = std::env::temp_dir().join(format!("sk-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let points: Vec<IngestPoint> = [8, 16, 32]
            .iter()
            .map(|&kib| IngestPoint {
                kib,
                disk: 900.0,
                one: 400.0,
                three: 200.0,
            })
            .collect();
        ingest(&dir.join("i.svg"), &points).unwrap();
        let lat = [LatencySeries {
            name: "quorum of 3".into(),
            points: vec![
                ("p50", Duration::from_micros(500)),
                ("p99", Duration::from_millis(3)),
            ],
        }];
        latency(&dir.join("l.svg"), &lat).unwrap();
        let svg = std::fs::read_to_string(dir.join("i.svg")).unwrap();
        for name in ["1 safekeeper", "3 safekeepers, one disk", "disk / 3"] {
            assert!(svg.contains(name), "legend lacks {name}");
        }
        assert!(
            std::fs::read_to_string(dir.join("l.svg"))
                .unwrap()
                .contains("quorum of 3")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
