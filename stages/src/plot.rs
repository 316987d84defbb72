//! The report's charts: PNGs with a title, labelled axes with ticks and a legend, drawn by
//! plotters with an embedded font (DejaVu Sans, `assets/fonts/`, Bitstream Vera licence beside
//! it) registered through plotters' `ab_glyph` loader, so no system font is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Result, StageError};

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process (plotters keeps a global font table).
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the embedded DejaVu Sans font does not parse".into())
    }
}

/// Colours of the series, in order (the matplotlib "tab10" palette).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Line,
    Points,
    /// A dashed-looking reference line (drawn thin and grey-ish in the series colour).
    Reference,
}

/// One named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
}

/// A chart to draw.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// Formats x tick labels (parameter and token counts read better as 1.2M).
    pub x_format: fn(f64) -> String,
    /// Fixed y range (accuracies: 0 to 1); from the data when None.
    pub y_range: Option<(f64, f64)>,
}

fn range(values: impl Iterator<Item = f64> + Clone) -> Option<(f64, f64)> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        (hi.abs() * 0.05).max(1e-6)
    };
    Some((lo - pad, hi + pad))
}

/// Draws `c` as an `width` x `height` PNG at `path`; false when no series has a point.
pub fn draw(path: &Path, c: &Chart, (width, height): (u32, u32)) -> Result<bool> {
    let e = |message: String| StageError::Plot {
        path: path.to_path_buf(),
        message,
    };
    let pts = || c.series.iter().flat_map(|s| s.points.iter());
    let Some(xr) = range(pts().map(|p| p.0)) else {
        return Ok(false);
    };
    // Room on the right for the legend, so it never covers a point.
    let xr = (xr.0, xr.1 + (xr.1 - xr.0) * 0.3);
    let yr = match c.y_range {
        Some(r) => r,
        None => range(pts().map(|p| p.1)).expect("points exist when x does"),
    };
    ensure_font().map_err(e)?;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(c.title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
        .map_err(|x| e(x.to_string()))?;
    let xf = c.x_format;
    chart
        .configure_mesh()
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .x_labels(6)
        .y_labels(8)
        .x_label_formatter(&|x| xf(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, s) in c.series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let drawn = match s.mark {
            Mark::Line => chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    col.stroke_width(2),
                ))
                .map_err(|x| e(x.to_string()))?,
            Mark::Reference => chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    col.stroke_width(1),
                ))
                .map_err(|x| e(x.to_string()))?,
            Mark::Points => chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 6, col.filled())))
                .map_err(|x| e(x.to_string()))?,
        };
        drawn
            .label(s.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.filled()));
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_renders_text_with_the_embedded_font() {
        let dir = tempfile::tempdir().unwrap();
        let series = vec![Series {
            name: "a".into(),
            points: vec![(1.0, 2.0), (2.0, 1.0)],
            mark: Mark::Line,
        }];
        let chart = |title| Chart {
            title,
            x_label: "x",
            y_label: "y",
            series: &series,
            x_format: |x| format!("{x:.1}"),
            y_range: None,
        };
        let with = dir.path().join("with.png");
        let without = dir.path().join("without.png");
        assert!(draw(&with, &chart("A title with words"), (400, 300)).unwrap());
        assert!(draw(&without, &chart(""), (400, 300)).unwrap());
        // The title's glyphs change pixels: text is really drawn.
        assert_ne!(
            std::fs::read(&with).unwrap(),
            std::fs::read(&without).unwrap()
        );
        let empty: Vec<Series> = vec![];
        let none = Chart {
            series: &empty,
            ..chart("t")
        };
        assert!(!draw(&dir.path().join("none.png"), &none, (400, 300)).unwrap());
    }
}
