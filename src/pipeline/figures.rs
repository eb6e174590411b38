//! The report's figures as PNG files, drawn with `plotters` from [`Analyses`]
//! parts: SIS size against threshold (the paper's Figure 5), SIS size of
//! correctly vs. wrongly classified images (Figure 4), pixel-location heatmaps
//! (Figure 2), the Table 1 analog as bars, and the transfer matrix (§4.1).
//!
//! Text is drawn with an embedded DejaVu Sans (`assets/fonts`, Bitstream Vera
//! licence) through plotters' `ab_glyph` feature, so a fresh machine needs no
//! fontconfig or freetype. Pixels are drawn into an RGB buffer and encoded with
//! the `png` crate, which keeps the `image` crate out of the build.
//!
//! Units: accuracies, confidences, SIS sizes and pixel frequencies are stored
//! as fractions in `[0, 1]` and plotted as percentages.
//!
//! [`Analyses`]: super::analyses::Analyses

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::analyses::{CorrectVsWrong, Heatmap, SisSizeCurve, Stat, Table1Row, TransferMatrix};

/// The font every figure uses, registered once under plotters' "sans-serif".
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static FONT_ONCE: Once = Once::new();
pub(super) const FONT: &str = "sans-serif";

/// Why a figure could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// The analyses hold data the figure cannot show (e.g. a heatmap whose
    /// value count is not height × width); names the offending part.
    #[error("cannot draw {figure}: {reason}")]
    Invalid { figure: String, reason: String },
    /// plotters failed while drawing (out-of-range coordinates, font lookup).
    #[error("drawing {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {path}: {source}")]
    Png {
        path: PathBuf,
        source: png::EncodingError,
    },
}

/// Series colours (Tableau 10): distinguishable and colour-blind tolerant.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub(super) fn series_colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Viridis, linearly interpolated between five of its control points: a
/// perceptually ordered scale that stays readable in greyscale.
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws into a white `width × height` RGB canvas and writes it to `path`
/// as an 8-bit RGB PNG.
pub(super) fn render<F>(path: &Path, width: u32, height: u32, draw: F) -> Result<(), FigureError>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
{
    FONT_ONCE.call_once(|| {
        // The font is compiled in; a failure here would be a broken asset, and
        // every text draw would then report FontUnavailable through `Draw`.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()));
        drawn.map_err(|reason| FigureError::Draw {
            path: path.to_path_buf(),
            reason,
        })?;
    }
    write_png(path, width, height, &buf)
}

fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<(), FigureError> {
    let io = |source| FigureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let enc = |source| FigureError::Png {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(enc)?;
    writer.write_image_data(rgb).map_err(enc)?;
    writer.finish().map_err(enc)
}

pub(super) fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A y-axis upper bound in percent that leaves headroom above `max_pct` and
/// lands on a multiple of 5 (at least 5, at most 100 unless data exceed it).
fn pct_axis_top(max_pct: f64) -> f64 {
    if !max_pct.is_finite() || max_pct <= 0.0 {
        return 5.0;
    }
    let top = ((max_pct * 1.15) / 5.0).ceil() * 5.0;
    if max_pct <= 100.0 {
        top.clamp(5.0, 100.0)
    } else {
        top
    }
}

/// Figure 5: mean SIS size (% of pixels) against threshold τ, one line per model.
pub fn sis_size_curves(curves: &[SisSizeCurve], path: &Path) -> Result<(), FigureError> {
    for c in curves {
        if c.thresholds.len() != c.mean_fraction.len() {
            return Err(FigureError::Invalid {
                figure: format!("SIS size curve of {}", c.model),
                reason: format!(
                    "{} thresholds but {} mean sizes",
                    c.thresholds.len(),
                    c.mean_fraction.len()
                ),
            });
        }
    }
    let points: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|c| {
            c.thresholds
                .iter()
                .zip(&c.mean_fraction)
                .filter(|(t, m)| t.is_finite() && m.is_finite())
                .map(|(&t, &m)| (t as f64, 100.0 * m))
                .collect()
        })
        .collect();
    let all = points.iter().flatten();
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut ymax: f64 = 0.0;
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        ymax = ymax.max(y);
    }
    if !(x0.is_finite() && x1.is_finite()) {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-6 {
        (x0, x1) = (x0 - 0.05, x1 + 0.05);
    }
    let pad = 0.03 * (x1 - x0);
    let ytop = pct_axis_top(ymax);
    render(path, 900, 560, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Mean SIS size vs. SIS threshold", (FONT, 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((x0 - pad)..(x1 + pad), 0.0..ytop)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc("SIS threshold τ (model confidence the subset must keep)")
            .y_desc("Mean SIS size (% of pixels)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_label_formatter(&|x| format!("{x:.2}"))
            .y_label_formatter(&|y| format!("{y:.0}%"))
            .draw()
            .map_err(e2s)?;
        for (i, (c, pts)) in curves.iter().zip(&points).enumerate() {
            let colour = series_colour(i);
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(e2s)?
                .label(c.model.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(e2s)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e2s)
    })
}

/// Writes `names[i]` centred under category `i` of a chart whose x axis is
/// the category index (plotters' own tick labels fall on "nice" fractions).
fn category_labels(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    chart: &ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    names: &[String],
) -> Result<(), String> {
    let y0 = chart.y_range().start;
    for (i, name) in names.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64, y0));
        label(
            root,
            name,
            (x, y + 8),
            14,
            &BLACK,
            (HPos::Center, VPos::Top),
        )?;
    }
    Ok(())
}

/// Draws a vertical error bar with caps at `x` from `lo` to `hi` (data units).
fn error_bar<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x: f64,
    lo: f64,
    hi: f64,
    cap: f64,
) -> Result<(), String> {
    let style = BLACK.stroke_width(2);
    chart
        .draw_series([
            PathElement::new(vec![(x, lo), (x, hi)], style),
            PathElement::new(vec![(x - cap, lo), (x + cap, lo)], style),
            PathElement::new(vec![(x - cap, hi), (x + cap, hi)], style),
        ])
        .map_err(e2s)?;
    Ok(())
}

/// Figure 4 (S3 on the corrupted set): mean SIS size of correctly and wrongly
/// classified images of `set` ("test images") per model, bars with 95% confidence
/// intervals.
pub fn correct_vs_wrong(
    rows: &[CorrectVsWrong],
    set: &str,
    path: &Path,
) -> Result<(), FigureError> {
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{} (τ = {})", r.model, r.threshold))
        .collect();
    let n = rows.len().max(1);
    let ymax = rows
        .iter()
        .flat_map(|r| [&r.correct, &r.wrong])
        .flatten()
        .map(|m| 100.0 * m.hi.max(m.mean))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let ytop = pct_axis_top(ymax);
    let width = (260 * n as u32 + 200).max(700);
    render(path, width, 560, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("SIS size of correctly vs. wrongly classified {set}"),
                (FONT, 24),
            )
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.6..(n as f64 - 0.4), 0.0..ytop)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("Model (SIS threshold)")
            .y_desc("Mean SIS size (% of pixels)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_labels(0)
            .y_label_formatter(&|y| format!("{y:.0}%"))
            .draw()
            .map_err(e2s)?;
        category_labels(root, &chart, &names)?;
        let groups = [("correctly classified", 0usize), ("misclassified", 3usize)];
        for (g, &(label, colour_index)) in groups.iter().enumerate() {
            let colour = series_colour(colour_index);
            let offset = if g == 0 { -0.2 } else { 0.2 };
            let bars: Vec<Rectangle<(f64, f64)>> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let m = if g == 0 { &r.correct } else { &r.wrong };
                    m.as_ref().filter(|m| m.mean.is_finite()).map(|m| {
                        let x = i as f64 + offset;
                        Rectangle::new(
                            [(x - 0.18, 0.0), (x + 0.18, 100.0 * m.mean)],
                            colour.filled(),
                        )
                    })
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(e2s)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled())
                });
        }
        for (i, r) in rows.iter().enumerate() {
            for (g, m) in [&r.correct, &r.wrong].into_iter().enumerate() {
                let x = i as f64 + if g == 0 { -0.2 } else { 0.2 };
                match m.as_ref().filter(|m| m.lo.is_finite() && m.hi.is_finite()) {
                    Some(m) => error_bar(&mut chart, x, 100.0 * m.lo, 100.0 * m.hi, 0.06)?,
                    None => {
                        // Say why a bar is missing instead of leaving a silent gap.
                        let what = if g == 0 { "correct" } else { "misclassified" };
                        no_images_note(root, &chart, x, what)?;
                    }
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e2s)
    })
}

/// "no WHAT / images" above the x axis at `x`, where a bar has no images to show.
fn no_images_note(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    chart: &ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x: f64,
    what: &str,
) -> Result<(), String> {
    let (px, py) = chart.backend_coord(&(x, 0.0));
    let anchor = (HPos::Center, VPos::Bottom);
    label(
        root,
        &format!("no {what}"),
        (px, py - 24),
        13,
        &BLACK,
        anchor,
    )?;
    label(root, "images", (px, py - 8), 13, &BLACK, anchor)
}

/// Draws `text` at pixel `(x, y)` on `area`, anchored as given.
fn label(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    text: &str,
    (x, y): (i32, i32),
    size: u32,
    colour: &RGBColor,
    anchor: (HPos, VPos),
) -> Result<(), String> {
    let style = TextStyle::from((FONT, size).into_font())
        .color(colour)
        .pos(Pos::new(anchor.0, anchor.1));
    area.draw(&Text::new(text.to_string(), (x, y), style))
        .map_err(e2s)
}

/// Draws a vertical colour bar for `viridis` over `[0, vmax]` at `(x, y)`,
/// `h` pixels tall, with tick labels formatted by `fmt` and a title above.
#[allow(clippy::too_many_arguments)]
fn colour_bar(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    x: i32,
    y: i32,
    h: i32,
    vmax: f64,
    title: &str,
    fmt: &dyn Fn(f64) -> String,
) -> Result<(), String> {
    let w = 22;
    for dy in 0..h {
        let t = 1.0 - dy as f64 / (h - 1).max(1) as f64;
        let c = viridis(t);
        root.draw(&Rectangle::new(
            [(x, y + dy), (x + w, y + dy + 1)],
            c.filled(),
        ))
        .map_err(e2s)?;
    }
    root.draw(&Rectangle::new(
        [(x, y), (x + w, y + h)],
        BLACK.stroke_width(1),
    ))
    .map_err(e2s)?;
    for k in 0..=4 {
        let frac = k as f64 / 4.0;
        let ty = y + h - 1 - ((h - 1) as f64 * frac).round() as i32;
        root.draw(&PathElement::new(vec![(x + w, ty), (x + w + 5, ty)], BLACK))
            .map_err(e2s)?;
        label(
            root,
            &fmt(vmax * frac),
            (x + w + 8, ty),
            13,
            &BLACK,
            (HPos::Left, VPos::Center),
        )?;
    }
    label(
        root,
        title,
        (x + w / 2, y - 12),
        13,
        &BLACK,
        (HPos::Center, VPos::Bottom),
    )
}

/// Figure 2: where the retained pixels lie. One row per model; the first cell is
/// over all test images, the others over images predicted as each class. All
/// cells share one colour scale (0 to the largest frequency shown) so they can
/// be compared.
/// `class_names` name the class columns (by class index; "class i" beyond them).
pub fn heatmap_grid(
    heatmaps: &[Heatmap],
    class_names: &[String],
    path: &Path,
) -> Result<(), FigureError> {
    let class_name = |k: i64| {
        class_names
            .get(k as usize)
            .cloned()
            .unwrap_or_else(|| format!("class {k}"))
    };
    for h in heatmaps {
        if h.values.len() != h.height * h.width || h.height == 0 || h.width == 0 {
            return Err(FigureError::Invalid {
                figure: format!(
                    "heatmap of {} ({})",
                    h.model,
                    h.class
                        .map_or("all classes".to_string(), |c| format!("class {c}"))
                ),
                reason: format!(
                    "{} values for a {}×{} image",
                    h.values.len(),
                    h.height,
                    h.width
                ),
            });
        }
    }
    let mut models: Vec<&str> = Vec::new();
    for h in heatmaps {
        if !models.contains(&h.model.as_str()) {
            models.push(&h.model);
        }
    }
    let mut columns: Vec<Option<i64>> = heatmaps.iter().map(|h| h.class).collect();
    columns.sort_by_key(|c| c.map_or(i64::MIN, |v| v));
    columns.dedup();
    let vmax = heatmaps
        .iter()
        .flat_map(|h| h.values.iter())
        .filter(|v| v.is_finite())
        .fold(0.0f32, |a, &b| a.max(b))
        .max(1e-6) as f64;

    let cols = columns.len().max(1) as i32;
    let rows = models.len().max(1) as i32;
    let cell = (1100 / cols).clamp(72, 160);
    let (left, top, gap, title_h, bar_w) = (150, 60, 10, 36, 130);
    let width = left + cols * (cell + gap) + bar_w;
    let height = top + rows * (cell + title_h + gap) + 20;
    render(path, width as u32, height.max(260) as u32, |root| {
        label(
            root,
            "Pixel locations of the retained pixels (fraction of images whose subset contains each pixel)",
            (width / 2, 14),
            18,
            &BLACK,
            (HPos::Center, VPos::Top),
        )?;
        for (r, model) in models.iter().enumerate() {
            let y0 = top + r as i32 * (cell + title_h + gap) + title_h;
            label(
                root,
                model,
                (left - 12, y0 + cell / 2),
                15,
                &BLACK,
                (HPos::Right, VPos::Center),
            )?;
            for (c, class) in columns.iter().enumerate() {
                let x0 = left + c as i32 * (cell + gap);
                let Some(h) = heatmaps
                    .iter()
                    .find(|h| h.model == *model && h.class == *class)
                else {
                    continue;
                };
                let title = match class {
                    None => format!("all (n={})", h.images),
                    Some(k) => format!("{} (n={})", class_name(*k), h.images),
                };
                label(
                    root,
                    &title,
                    (x0 + cell / 2, y0 - 6),
                    13,
                    &BLACK,
                    (HPos::Center, VPos::Bottom),
                )?;
                // Keep the image's aspect ratio inside the square cell.
                let scale = cell as f64 / h.height.max(h.width) as f64;
                let (dw, dh) = (
                    (h.width as f64 * scale).round() as i32,
                    (h.height as f64 * scale).round() as i32,
                );
                for py in 0..dh {
                    let sy = ((py as f64 / scale) as usize).min(h.height - 1);
                    for px in 0..dw {
                        let sx = ((px as f64 / scale) as usize).min(h.width - 1);
                        let v = h.values[sy * h.width + sx] as f64;
                        root.draw_pixel((x0 + px, y0 + py), &viridis(v / vmax))
                            .map_err(e2s)?;
                    }
                }
            }
        }
        let bar_h = (rows * (cell + title_h + gap) - title_h - gap).clamp(120, 400);
        colour_bar(
            root,
            left + cols * (cell + gap) + 20,
            top + title_h,
            bar_h,
            vmax,
            "% of images",
            &|v| format!("{:.0}%", 100.0 * v),
        )
    })
}

/// A Table 1 statistic's error bar, as its table cell shows it: ±1 std over 3 or
/// more replicates, the range over 2, the 95% Wilson interval of one model's
/// accuracy; `None` where there is nothing to draw.
fn error_range(s: &Stat) -> Option<(f64, f64)> {
    let (lo, hi) = match s.n {
        1 => super::analysis::stats::wilson(s.count?.0, s.count?.1)?,
        2 => (s.min, s.max),
        _ => (s.mean - s.std, s.mean + s.std),
    };
    (lo.is_finite() && hi.is_finite() && hi > lo).then_some((lo, hi))
}

/// The Table 1 analog as grouped bars: one group per (model, trained on), one
/// bar per evaluation set, error bars as the report's table ([`error_range`]).
pub fn table1_bars(rows: &[Table1Row], path: &Path) -> Result<(), FigureError> {
    let mut evals: Vec<&str> = Vec::new();
    for r in rows {
        for (e, _) in &r.eval_on {
            if !evals.contains(&e.as_str()) {
                evals.push(e);
            }
        }
    }
    let groups: Vec<String> = rows
        .iter()
        .map(|r| format!("{}: {}", r.model, r.train_on))
        .collect();
    let n = rows.len().max(1);
    let width = (190 * n as u32 + 160).max(800);
    let ymax = rows
        .iter()
        .flat_map(|r| r.eval_on.iter())
        .map(|(_, s)| 100.0 * error_range(s).map_or(s.mean, |r| r.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    // Leave room above 100% for the legend.
    let ytop = (pct_axis_top(ymax) + 20.0).max(20.0);
    let bar_w = 0.8 / evals.len().max(1) as f64;
    render(path, width, 600, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Test accuracy (%) by training data (groups) and evaluation data (bars)",
                (FONT, 24),
            )
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..ytop)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("Model: trained on")
            .y_desc("Test accuracy (%)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_labels(0)
            .y_label_formatter(&|y| {
                if *y <= 100.0 {
                    format!("{y:.0}%")
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(e2s)?;
        category_labels(root, &chart, &groups)?;
        for (k, eval) in evals.iter().enumerate() {
            let colour = series_colour(k);
            let offset = -0.4 + bar_w * (k as f64 + 0.5);
            let bars: Vec<Rectangle<(f64, f64)>> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let (_, s) = r.eval_on.iter().find(|(e, _)| e == eval)?;
                    s.mean.is_finite().then(|| {
                        let x = i as f64 + offset;
                        Rectangle::new(
                            [(x - 0.45 * bar_w, 0.0), (x + 0.45 * bar_w, 100.0 * s.mean)],
                            colour.filled(),
                        )
                    })
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(e2s)?
                .label(format!("evaluated on {eval}"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled())
                });
            for (i, r) in rows.iter().enumerate() {
                if let Some((_, s)) = r.eval_on.iter().find(|(e, _)| e == eval) {
                    let x = i as f64 + offset;
                    let mut top = 100.0 * s.mean;
                    if let Some((lo, hi)) = error_range(s) {
                        top = 100.0 * hi;
                        error_bar(&mut chart, x, (100.0 * lo).max(0.0), top, 0.3 * bar_w)?;
                    }
                    if s.mean.is_finite() {
                        // The value (as in the report's table) above the bar.
                        let (px, py) = chart.backend_coord(&(x, top));
                        let text = format!("{:.2}", 100.0 * s.mean);
                        label(
                            root,
                            &text,
                            (px, py - 4),
                            12,
                            &BLACK,
                            (HPos::Center, VPos::Bottom),
                        )?;
                    }
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(e2s)
    })
}

/// §4.1: accuracy of each evaluator (columns) on each source model's backselect
/// test subsets (rows), as a heatmap with the percentage written in each cell.
pub fn transfer_matrix(m: &TransferMatrix, path: &Path) -> Result<(), FigureError> {
    let bad = m.accuracy.len() != m.sources.len()
        || m.accuracy.iter().any(|r| r.len() != m.evaluators.len());
    if bad || m.sources.is_empty() || m.evaluators.is_empty() {
        return Err(FigureError::Invalid {
            figure: "transfer matrix".into(),
            reason: format!(
                "{} sources × {} evaluators but accuracy rows of lengths {:?}",
                m.sources.len(),
                m.evaluators.len(),
                m.accuracy.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        });
    }
    let (rows, cols) = (m.sources.len() as i32, m.evaluators.len() as i32);
    let cell = (700 / cols.max(rows)).clamp(70, 150);
    let (left, top) = (200, 110);
    let width = left + cols * cell + 160;
    let height = top + rows * cell + 50;
    render(path, width as u32, height as u32, |root| {
        label(
            root,
            "Accuracy of each model (columns) on each model's backselect test subsets (rows)",
            (width / 2, 12),
            18,
            &BLACK,
            (HPos::Center, VPos::Top),
        )?;
        label(
            root,
            "Evaluated by →",
            (left + cols * cell / 2, 50),
            15,
            &BLACK,
            (HPos::Center, VPos::Top),
        )?;
        label(
            root,
            "Subsets from ↓",
            (left - 12, top - 12),
            15,
            &BLACK,
            (HPos::Right, VPos::Bottom),
        )?;
        for (j, e) in m.evaluators.iter().enumerate() {
            let x = left + j as i32 * cell + cell / 2;
            label(
                root,
                e,
                (x, top - 10),
                14,
                &BLACK,
                (HPos::Center, VPos::Bottom),
            )?;
        }
        for (i, s) in m.sources.iter().enumerate() {
            let y0 = top + i as i32 * cell;
            label(
                root,
                s,
                (left - 12, y0 + cell / 2),
                14,
                &BLACK,
                (HPos::Right, VPos::Center),
            )?;
            for (j, &a) in m.accuracy[i].iter().enumerate() {
                let x0 = left + j as i32 * cell;
                let colour = viridis(a);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    colour.filled(),
                ))
                .map_err(e2s)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    WHITE.stroke_width(2),
                ))
                .map_err(e2s)?;
                // Dark text on the light (yellow/green) end of viridis.
                let text_colour = if a.is_finite() && a > 0.6 {
                    BLACK
                } else {
                    WHITE
                };
                let text = if a.is_finite() {
                    format!("{:.2}%", 100.0 * a)
                } else {
                    "n/a".into()
                };
                label(
                    root,
                    &text,
                    (x0 + cell / 2, y0 + cell / 2),
                    16,
                    &text_colour,
                    (HPos::Center, VPos::Center),
                )?;
            }
        }
        colour_bar(
            root,
            left + cols * cell + 40,
            top,
            (rows * cell).max(120),
            1.0,
            "accuracy",
            &|v| format!("{:.0}%", 100.0 * v),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_middle_are_the_published_colours() {
        // matplotlib's viridis(0), viridis(0.5), viridis(1) in 8-bit RGB.
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(0.5), RGBColor(33, 145, 140));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), RGBColor(68, 1, 84));
        assert_eq!(viridis(7.0), RGBColor(253, 231, 37));
    }

    #[test]
    fn percent_axis_top_has_headroom_and_caps_at_100() {
        assert_eq!(pct_axis_top(0.0), 5.0);
        assert_eq!(pct_axis_top(10.0), 15.0); // 11.5 → 15
        assert_eq!(pct_axis_top(95.0), 100.0);
        assert_eq!(pct_axis_top(f64::NAN), 5.0);
    }

    #[test]
    fn heatmap_with_wrong_value_count_is_rejected_by_name() {
        let h = Heatmap {
            model: "cnn-a".into(),
            class: Some(3),
            height: 4,
            width: 4,
            values: vec![0.0; 15],
            images: 2,
        };
        let dir = tempfile::tempdir().unwrap();
        let err = heatmap_grid(&[h], &[], &dir.path().join("h.png")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("cnn-a") && msg.contains("class 3") && msg.contains("15"),
            "{msg}"
        );
    }

    #[test]
    fn ragged_transfer_matrix_is_rejected() {
        let m = TransferMatrix {
            sources: vec!["a".into(), "b".into()],
            evaluators: vec!["a".into(), "b".into()],
            accuracy: vec![vec![0.9, 0.1], vec![0.2]],
        };
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            transfer_matrix(&m, &dir.path().join("t.png")),
            Err(FigureError::Invalid { .. })
        ));
    }
}
