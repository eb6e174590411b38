//! The Figure S7 analog: human accuracy against the fraction of pixels kept — one
//! dot per participant and fraction, the mean ± std over participants, the
//! least-squares line through the dots with its R², and chance level.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use super::analysis::HumanAnalysis;
use super::HumanError;

static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static FONT_ONCE: Once = Once::new();

/// Draws the figure as a `900 × 560` PNG at `path`.
pub fn accuracy_vs_fraction(a: &HumanAnalysis, chance: f64, path: &Path) -> Result<(), HumanError> {
    FONT_ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT_BYTES);
    });
    let (w, h) = (900u32, 560u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let draw_err = |e: String| HumanError::Invalid(format!("drawing {}: {e}", path.display()));
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, a, chance).map_err(draw_err)?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    let png = super::render::encode_png(w as usize, h as usize, &buf)?;
    std::fs::write(path, png).map_err(|e| HumanError::io(path, e))
}

fn draw(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    a: &HumanAnalysis,
    chance: f64,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let x_max = a.fractions.iter().cloned().fold(0.0, f64::max) * 100.0 * 1.1 + 1.0;
    let caption = match &a.fit {
        Some(f) => format!(
            "Human accuracy vs. pixels kept (least squares: R² = {:.2})",
            f.r2
        ),
        None => "Human accuracy vs. pixels kept".to_string(),
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..100.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("pixels kept by backward selection (%)")
        .y_desc("accuracy (%)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(e)?;
    let grey = RGBColor(120, 120, 120);
    chart
        .draw_series(LineSeries::new(
            [(0.0, chance * 100.0), (x_max, chance * 100.0)],
            grey.stroke_width(1),
        ))
        .map_err(e)?
        .label(format!("chance ({:.0}%)", chance * 100.0))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], grey));
    let dot = RGBColor(31, 119, 180);
    let points: Vec<(f64, f64)> = a
        .participants
        .iter()
        .flat_map(|p| {
            (0..a.fractions.len()).filter_map(move |f| {
                p.accuracy(f)
                    .map(|acc| (a.fractions[f] * 100.0, acc * 100.0))
            })
        })
        .collect();
    chart
        .draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 4, dot.mix(0.45).filled())),
        )
        .map_err(e)?
        .label("one participant")
        .legend(move |(x, y)| Circle::new((x + 9, y), 4, dot.mix(0.45).filled()));
    let mean = RGBColor(214, 39, 40);
    for r in a.table.iter().filter(|r| r.participants > 0) {
        let (x, m, s) = (r.fraction * 100.0, r.mean * 100.0, r.std * 100.0);
        chart
            .draw_series([PathElement::new(
                [(x, (m - s).max(0.0)), (x, (m + s).min(100.0))],
                mean.stroke_width(2),
            )])
            .map_err(e)?;
    }
    chart
        .draw_series(a.table.iter().filter(|r| r.participants > 0).map(|r| {
            Rectangle::new(
                [
                    (r.fraction * 100.0 - 0.6, r.mean * 100.0 - 1.2),
                    (r.fraction * 100.0 + 0.6, r.mean * 100.0 + 1.2),
                ],
                mean.filled(),
            )
        }))
        .map_err(e)?
        .label("mean ± std over participants")
        .legend(move |(x, y)| Rectangle::new([(x + 5, y - 4), (x + 13, y + 4)], mean.filled()));
    if let Some(fit) = &a.fit {
        let line = RGBColor(44, 160, 44);
        let y = |x: f64| ((fit.intercept + fit.slope * x / 100.0) * 100.0).clamp(0.0, 100.0);
        let lo = a.fractions.iter().cloned().fold(f64::INFINITY, f64::min) * 100.0;
        let hi = a.fractions.iter().cloned().fold(0.0, f64::max) * 100.0;
        chart
            .draw_series(LineSeries::new(
                [(lo, y(lo)), (hi, y(hi))],
                line.stroke_width(2),
            ))
            .map_err(e)?
            .label(format!(
                "least squares: {:.3} + {:.3}·q (R² = {:.3})",
                fit.intercept, fit.slope, fit.r2
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], line.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(e)?;
    Ok(())
}
