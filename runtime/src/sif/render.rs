//! The text `siftool header` and `siftool list` print, reproduced exactly so that our reader
//! can be checked against the reference tool's output (and users see familiar tables).

use super::read::{Link, Sif};

/// Unix seconds of Go's zero `time.Time` (year 1): what deterministic SIFs store for "unset".
pub const GO_ZERO_TIME: i64 = -62_135_596_800;

/// A size the way `siftool` prints it: `27 KiB`, `2 B`.
pub fn readable_size(size: i64) -> String {
    if -1024 < size && size < 1024 {
        return format!("{size} B");
    }
    let units = b"KMGTPE";
    let (mut div, mut exp) = (1024f64, 0usize);
    let mut n = size / 1024;
    while n <= -1024 || n >= 1024 {
        div *= 1024.0;
        exp += 1;
        n /= 1024;
    }
    format!(
        "{:.0} {}iB",
        (size as f64 / div).round(),
        units[exp] as char
    )
}

/// Formats Unix seconds as Go's `time.Time.String()` does in UTC: `2020-06-30 00:01:56 +0000 UTC`.
pub(crate) fn go_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The header table, as `siftool header` prints it.
pub fn header_text(sif: &Sif) -> String {
    let h = sif.header();
    let mut rows: Vec<(&str, String)> = Vec::new();
    if !h.launch_script.is_empty() {
        rows.push((
            "Launch Script:",
            h.launch_script.trim_end_matches('\n').into(),
        ));
    }
    rows.push(("Version:", h.version.clone()));
    if h.arch() != "unknown" {
        rows.push(("Primary Architecture:", h.arch().into()));
    }
    if !h.id_is_nil() {
        rows.push(("ID:", h.id_string()));
    }
    if h.created_at != GO_ZERO_TIME {
        rows.push(("Created At:", go_time(h.created_at)));
    }
    if h.modified_at != GO_ZERO_TIME {
        rows.push(("Modified At:", go_time(h.modified_at)));
    }
    rows.push(("Descriptors Free:", h.descriptors_free.to_string()));
    rows.push(("Descriptors Total:", h.descriptors_total.to_string()));
    rows.push(("Descriptors Offset:", h.descriptors_offset.to_string()));
    rows.push(("Descriptors Size:", readable_size(h.descriptors_size)));
    rows.push(("Data Offset:", h.data_offset.to_string()));
    rows.push(("Data Size:", readable_size(h.data_size)));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}{v}\n"))
        .collect()
}

/// The descriptor table, as `siftool list` prints it.
pub fn list_text(sif: &Sif) -> String {
    let rule = "-".repeat(78);
    let mut out = format!(
        "{rule}\n{:<4} {:<8} {:<8} {:<26} {}\n{rule}\n",
        "ID", "|GROUP", "|LINK", "|SIF POSITION (start-end)", "|TYPE"
    );
    for d in sif.descriptors() {
        out.push_str(&format!("{:<4} ", d.id));
        match d.group {
            0 => out.push_str(&format!("|{:<7} ", "NONE")),
            g => out.push_str(&format!("|{g:<7} ")),
        }
        match d.link {
            Link::None => out.push_str(&format!("|{:<7} ", "NONE")),
            Link::Group(g) => out.push_str(&format!("|{g:<3} (G) ")),
            Link::Object(o) => out.push_str(&format!("|{o:<7} ")),
        }
        out.push_str(&format!("{:<26} ", format!("|{}-{} ", d.offset, d.end())));
        out.push_str(&format!("|{}\n", d.type_summary()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_siftool() {
        assert_eq!(readable_size(2), "2 B");
        assert_eq!(readable_size(28080), "27 KiB");
        assert_eq!(readable_size(8784), "9 KiB");
        assert_eq!(readable_size(270_928), "265 KiB");
        assert_eq!(readable_size(3 << 30), "3 GiB");
    }

    #[test]
    fn times_match_go() {
        assert_eq!(go_time(1_593_475_316), "2020-06-30 00:01:56 +0000 UTC");
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
    }
}
