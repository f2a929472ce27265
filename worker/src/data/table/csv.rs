//! CSV files read as one table: a header row, then cells that make a column numeric only if every present one parses as a number.

use std::io;
use std::path::{Path, PathBuf};

use ::csv::{ErrorKind, ReaderBuilder, StringRecord};

use super::{check_header, invalid, non_finite, Column, Table, Values};

/// One column's cells as read. They stay text until every file is read, because only then is
/// it known whether the column is numeric; kept back to back in one string rather than one
/// allocation per cell.
#[derive(Default)]
struct RawColumn {
    text: String,
    /// Where each row's cell ends in `text`, and whether it is present (not empty or
    /// whitespace-only).
    cells: Vec<(usize, bool)>,
    /// Some present cell does not parse as a number.
    is_text: bool,
    /// The first cell that parses as NaN or an infinity: file, data row (1-based) and value.
    /// It refuses the table only if the column turns out numeric ("nan" is fine as text).
    non_finite: Option<(usize, usize, f64)>,
}

impl RawColumn {
    fn push(&mut self, cell: &str, file: usize, row: usize) {
        let trimmed = cell.trim_ascii();
        let present = !trimmed.is_empty();
        if present {
            match trimmed.parse::<f64>() {
                Ok(x) if !x.is_finite() && self.non_finite.is_none() => {
                    self.non_finite = Some((file, row, x))
                }
                Ok(_) => {}
                Err(_) => self.is_text = true,
            }
            self.text.push_str(cell);
        }
        self.cells.push((self.text.len(), present));
    }

    /// Each row's cell, None where missing.
    fn cells(&self) -> impl Iterator<Item = Option<&str>> {
        let starts = std::iter::once(0).chain(self.cells.iter().map(|&(end, _)| end));
        starts
            .zip(&self.cells)
            .map(|(start, &(end, present))| present.then(|| &self.text[start..end]))
    }

    fn into_values(self, files: &[PathBuf], name: &str) -> io::Result<Values> {
        if self.is_text {
            return Ok(Values::Text(
                self.cells().map(|c| c.map(str::to_string)).collect(),
            ));
        }
        if let Some((file, row, x)) = self.non_finite {
            return Err(non_finite(&files[file], row, name, x));
        }
        Ok(Values::Numeric(
            self.cells()
                .map(|c| c.map_or(f64::NAN, |c| c.trim_ascii().parse().unwrap_or(f64::NAN)))
                .collect(),
        ))
    }
}

/// Reads `files` (in this order) as one table.
pub(super) fn read(files: &[PathBuf]) -> io::Result<Table> {
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<RawColumn> = Vec::new();
    let mut rows = 0;
    for (file, path) in files.iter().enumerate() {
        let mut reader = ReaderBuilder::new()
            .from_path(path)
            .map_err(|e| csv_error(path, e))?;
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .map(str::to_string)
            .collect();
        let first = (file > 0).then(|| (files[0].as_path(), names.as_slice()));
        check_header(first, path, &header)?;
        if file == 0 {
            columns = header.iter().map(|_| RawColumn::default()).collect();
            names = header;
        }
        let mut record = StringRecord::new();
        let mut row = 0;
        while reader
            .read_record(&mut record)
            .map_err(|e| csv_error(path, e))?
        {
            row += 1;
            for (column, cell) in columns.iter_mut().zip(record.iter()) {
                column.push(cell, file, row);
            }
        }
        rows += row;
    }
    let columns = names
        .into_iter()
        .zip(columns)
        .map(|(name, raw)| {
            let values = raw.into_values(files, &name)?;
            Ok(Column { name, values })
        })
        .collect::<io::Result<_>>()?;
    Ok(Table { rows, columns })
}

/// The csv crate's error with the file, and the line where it points at one.
fn csv_error(path: &Path, e: ::csv::Error) -> io::Error {
    let line = e
        .position()
        .map(|p| format!(", line {}", p.line()))
        .unwrap_or_default();
    match e.kind() {
        ErrorKind::Io(io) => io::Error::new(io.kind(), format!("{}: {io}", path.display())),
        ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => invalid(format!(
            "{}{line}: {len} fields where the header has {expected_len}; quote fields that contain commas",
            path.display()
        )),
        ErrorKind::Utf8 { err, .. } => invalid(format!(
            "{}{line}: field {} is not UTF-8 text; save the file as UTF-8",
            path.display(),
            err.field() + 1
        )),
        _ => invalid(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{error, write};
    use super::super::{read_table, Values};

    #[test]
    fn a_row_with_the_wrong_number_of_fields_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "a,b\n1,2\n\"x\ny\",3\n4,5,6\n");
        let e = error(dir.path());
        assert!(
            e.contains("a.csv, line 5: 3 fields where the header has 2"),
            "{e}"
        );
    }

    #[test]
    fn a_nan_or_infinite_number_is_refused_with_its_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "1.csv", "a,b\n1,2\n");
        write(dir.path(), "2.csv", "a,b\n1,2\n3,NaN\n");
        let e = error(dir.path());
        assert!(
            e.contains("2.csv: row 2, column `b`: NaN is not a finite number"),
            "{e}"
        );
        write(dir.path(), "2.csv", "a,b\n-inf,2\n");
        let e = error(dir.path());
        assert!(e.contains("2.csv: row 1, column `a`: -inf"), "{e}");
    }

    #[test]
    fn nan_in_a_text_column_is_text() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "name\nnan\nAnna\n");
        let (_, table) = read_table(dir.path(), "t").unwrap();
        assert!(
            matches!(&table.columns[0].values, Values::Text(v) if v[0].as_deref() == Some("nan"))
        );
    }

    #[test]
    fn invalid_utf8_and_a_missing_header_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), b"a,b\n1,\xff\n").unwrap();
        let e = error(dir.path());
        assert!(e.contains("a.csv, line 2: field 2 is not UTF-8"), "{e}");
        write(dir.path(), "a.csv", "");
        let e = error(dir.path());
        assert!(e.contains("a.csv: no columns"), "{e}");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "\u{feff}a,b\n1,2\n");
        let (_, table) = read_table(dir.path(), "t").unwrap();
        assert!(table.column("a").is_some());
    }
}
