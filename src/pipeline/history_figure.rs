//! Figure S10: confidence in the predicted class along BackSelect — thin lines for
//! sampled test images, a bold line for the mean over all of them, one colour per
//! model. Kept apart from [`super::figures`] (one file per figure family).

use std::path::Path;

use plotters::prelude::*;

use super::analyses::ConfidenceHistory;
use super::figures::{e2s, render, series_colour, FigureError, FONT};

pub fn confidence_history(histories: &[ConfidenceHistory], path: &Path) -> Result<(), FigureError> {
    render(path, 900, 560, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Confidence along backward selection", (FONT, 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..100.0, 0.0..100.0)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc("Pixels removed (% of the image)")
            .y_desc("Confidence in the predicted class (%)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_label_formatter(&|x| format!("{x:.0}%"))
            .y_label_formatter(&|y| format!("{y:.0}%"))
            .draw()
            .map_err(e2s)?;
        let pct = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
            pts.iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (100.0 * x, 100.0 * y))
                .collect()
        };
        for (i, h) in histories.iter().enumerate() {
            let colour = series_colour(i);
            for (_, pts) in &h.sample {
                chart
                    .draw_series(LineSeries::new(pct(pts), colour.mix(0.35).stroke_width(1)))
                    .map_err(e2s)?;
            }
            chart
                .draw_series(LineSeries::new(pct(&h.mean), colour.stroke_width(3)))
                .map_err(e2s)?
                .label(format!(
                    "{}: mean of {} images (thin: {} single images)",
                    h.model,
                    h.images,
                    h.sample.len()
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e2s)
    })
}
