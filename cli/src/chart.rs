//! Draws throughput and p99 latency against clients, one line per workload and mode
//! (the median of repeated runs).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::bench::Measurement;

pub fn draw(path: &Path, results: &[Measurement]) -> Result<(), String> {
    let mut series: BTreeMap<String, Vec<(usize, f64, f64)>> = BTreeMap::new();
    for m in results {
        let key = format!(
            "{} {}{}",
            m.workload,
            format!("{:?}", m.mode).to_lowercase(),
            m.prefill.map_or(String::new(), |n| format!(" @{n}"))
        );
        series
            .entry(key)
            .or_default()
            .push((m.clients, m.ops_per_s, m.p99_ms));
    }
    // Repeated runs: one point per client count, the median of each value.
    for points in series.values_mut() {
        points.sort_by_key(|p| p.0);
        let mut medians = Vec::new();
        for group in points.chunk_by(|a, b| a.0 == b.0) {
            let median = |f: fn(&(usize, f64, f64)) -> f64| {
                let mut v: Vec<f64> = group.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            medians.push((group[0].0, median(|p| p.1), median(|p| p.2)));
        }
        *points = medians;
    }
    let max_clients = results.iter().map(|m| m.clients).max().unwrap_or(1).max(2);
    let max_ops = results.iter().map(|m| m.ops_per_s).fold(1.0, f64::max) * 1.1;
    let max_p99 = results.iter().map(|m| m.p99_ms).fold(0.1, f64::max) * 1.1;

    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    let panels: [(&DrawingArea<_, _>, &str, f64, bool); 2] = [
        (&left, "throughput (ops/s)", max_ops, true),
        (&right, "p99 latency (ms)", max_p99, false),
    ];
    for (area, title, max_y, throughput) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..max_clients + 1, 0.0..max_y)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let data: Vec<(usize, f64)> = points
                .iter()
                .map(|(c, ops, p99)| (*c, if throughput { *ops } else { *p99 }))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
                });
            chart
                .draw_series(data.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
