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
        chart
            .draw_series(LineSeries::new(data.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(data.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
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
        chart
            .draw_series(LineSeries::new(data.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(data.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
