//! Drawing the library's [`Figure`]s with plotters: SVG (inline in reports, or files) and PNG.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use sgdlab::lab::figures::Figure;

/// DejaVu Sans (free licence, see assets/DejaVuSans.LICENSE), embedded so that charts render
/// the same on any machine, with no system font library.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is embedded and known to parse; a failure would only lose the text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Pixel size of every chart.
pub const SIZE: (u32, u32) = (960, 600);

fn bounds(fig: &Figure) -> (f64, f64, f64, f64) {
    let mut pts: Vec<(f64, f64)> = fig.lines.iter().flat_map(|l| l.points.clone()).collect();
    pts.extend(fig.arrows.iter().flat_map(|a| [a.from, a.to]));
    pts.extend(fig.markers.iter().flat_map(|m| m.at.clone()));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts
        .into_iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
    {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    let (dx, dy) = ((x1 - x0).max(1e-9), (y1 - y0).max(1e-9));
    // With markers, room at the top for the legend (drawn at the upper right), so that it
    // covers no point of the data.
    let legend_room = if fig.markers.is_empty() { 0.06 } else { 0.5 };
    (
        x0 - 0.03 * dx,
        x1 + 0.03 * dx,
        y0 - 0.06 * dy,
        y1 + legend_room * dy,
    )
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing failed: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    if !fig.bars.is_empty() {
        return draw_bars(root, fig);
    }
    let (x0, x1, y0, y1) = bounds(fig);
    let mut chart = ChartBuilder::on(&root)
        .caption(&fig.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(&fig.x_label)
        .y_desc(&fig.y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for a in &fig.arrows {
        let grey = RGBColor(120, 120, 120);
        let (dx, dy) = (a.to.0 - a.from.0, a.to.1 - a.from.1);
        let head = |angle: f64| {
            let (s, c) = angle.sin_cos();
            (
                a.to.0 - 0.3 * (c * dx - s * dy),
                a.to.1 - 0.3 * (s * dx + c * dy),
            )
        };
        chart
            .draw_series([
                PathElement::new(vec![a.from, a.to], grey.stroke_width(1)),
                PathElement::new(vec![head(0.4), a.to, head(-0.4)], grey.stroke_width(1)),
            ])
            .map_err(err)?;
    }
    for l in &fig.lines {
        let color = COLORS[l.group % COLORS.len()];
        let points: Vec<(f64, f64)> = l
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let series = if l.dashed {
            chart
                .draw_series(DashedLineSeries::new(points, 8, 6, color.stroke_width(2)))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
        };
        let dashed = l.dashed;
        series.label(l.label.clone()).legend(move |(x, y)| {
            let end = if dashed { x + 8 } else { x + 20 };
            PathElement::new(vec![(x, y), (end, y)], color.stroke_width(2))
        });
    }
    // Markers are outlines — circle, triangle, cross in turn — each larger than the one
    // before, so that markers at one point (the fixed points of two optimizers that agree,
    // or the loss minimiser) all stay visible; the legend draws each with its own shape.
    for (i, m) in fig.markers.iter().enumerate() {
        let color = COLORS[(i + 3) % COLORS.len()];
        let (shape, size) = (i % 3, 5 + 2 * i as i32);
        let style = color.stroke_width(2);
        let series = match shape {
            0 => chart
                .draw_series(m.at.iter().map(|&p| Circle::new(p, size, style)))
                .map_err(err)?,
            1 => chart
                .draw_series(m.at.iter().map(|&p| {
                    let (s, h) = (size, size);
                    EmptyElement::at(p)
                        + PathElement::new(vec![(0, -h), (s, h), (-s, h), (0, -h)], style)
                }))
                .map_err(err)?,
            _ => chart
                .draw_series(m.at.iter().map(|&p| Cross::new(p, size, style)))
                .map_err(err)?,
        };
        series
            .label(m.label.clone())
            .legend(move |(x, y)| -> DynElement<DB, (i32, i32)> {
                match shape {
                    0 => Circle::new((x + 10, y), 5, style).into_dyn(),
                    1 => PathElement::new(
                        vec![
                            (x + 10, y - 5),
                            (x + 15, y + 5),
                            (x + 5, y + 5),
                            (x + 10, y - 5),
                        ],
                        style,
                    )
                    .into_dyn(),
                    _ => Cross::new((x + 10, y), 5, style).into_dyn(),
                }
            });
    }
    if !fig.lines.is_empty() || !fig.markers.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing failed: {e:?}");
    let n = fig.bars.len();
    let top = fig
        .bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.1;
    let labels: Vec<String> = fig.bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(&fig.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(&fig.x_label)
        .y_desc(&fig.y_label)
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(fig.bars.iter().enumerate().map(|(i, (_, v))| {
            let x = i as f64;
            Rectangle::new([(x - 0.35, 0.0), (x + 0.35, *v)], COLORS[0].filled())
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The figure as an SVG document.
pub fn svg(fig: &Figure) -> anyhow::Result<String> {
    register_font();
    let mut out = String::new();
    draw(
        SVGBackend::with_string(&mut out, SIZE).into_drawing_area(),
        fig,
    )?;
    Ok(out)
}

/// Writes `stem.svg` and `stem.png` (each atomically).
pub fn write(fig: &Figure, stem: &Path) -> anyhow::Result<()> {
    let svg_path = stem.with_extension("svg");
    sgdlab::io::write_atomic(&svg_path, svg(fig)?.as_bytes())
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let png_path = stem.with_extension("png");
    // A unique temporary name that still ends in .png (plotters picks the encoder by it).
    let mut tmp = sgdlab::io::temp_path(&png_path)?.into_os_string();
    tmp.push(".png");
    let tmp = std::path::PathBuf::from(tmp);
    let result = draw(BitMapBackend::new(&tmp, SIZE).into_drawing_area(), fig).and_then(|()| {
        std::fs::File::open(&tmp)?.sync_all()?;
        sgdlab::io::commit_temp(&tmp, &png_path).map_err(anyhow::Error::from)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", png_path.display()))
}
