//! `--output table|json|yaml`: every command prints either aligned columns for people or one
//! JSON or YAML document for machines (the same document, camelCase keys).

use serde_json::Value;

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON document on standard output.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// Aligned columns; the header is upper-cased.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_uppercase()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n") + "\n"
}

/// Prints `value` as JSON, or `text()` as it is.
pub fn print(output: Output, value: &Value, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{value}"),
        Output::Yaml => print!("{}", serde_yaml::to_string(value).expect("JSON values are YAML")),
        Output::Table => print!("{}", text()),
    }
}

/// `value` with every object key in camelCase (`next_hop` → `nextHop`): the sidecar's admin API
/// answers some lists in snake_case, and genesisctl's JSON and YAML are camelCase throughout.
pub fn camel_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let mut key = String::with_capacity(k.len());
                    let mut upper = false;
                    for c in k.chars() {
                        match c {
                            '_' => upper = true,
                            c if upper => {
                                key.extend(c.to_uppercase());
                                upper = false;
                            }
                            c => key.push(c),
                        }
                    }
                    (key, camel_keys(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(camel_keys).collect()),
        other => other.clone(),
    }
}

/// "1h2m", "45s", "-3s": a duration in seconds for people.
pub fn human_secs(secs: f64) -> String {
    let sign = if secs < 0.0 { "-" } else { "" };
    let s = secs.abs().round() as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let text = match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    };
    format!("{sign}{text}")
}

/// A JSON value as a table cell (strings without quotes, null as "-").
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        // Measured values (an RTT in ms, say) to two decimals, not 0.30399000000000004.
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_camel_case_at_every_depth() {
        let v = serde_json::json!([{"next_hop": "m1", "rtt_ms": 0.3, "deep": {"seq_no_x": 1}}]);
        assert_eq!(
            camel_keys(&v),
            serde_json::json!([{"nextHop": "m1", "rttMs": 0.3, "deep": {"seqNoX": 1}}])
        );
    }

    #[test]
    fn measured_numbers_show_two_decimals_and_counts_stay_whole() {
        assert_eq!(cell(&serde_json::json!(0.30399000000000004)), "0.30");
        assert_eq!(cell(&serde_json::json!(12)), "12");
        assert_eq!(cell(&serde_json::json!(null)), "-");
    }

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let t = table(
            &["node", "ok"],
            &[vec!["m10".into(), "yes".into()], vec!["m2".into(), "no".into()]],
        );
        assert_eq!(t, "NODE  OK\nm10   yes\nm2    no\n");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_secs(45.0), "45s");
        assert_eq!(human_secs(3725.0), "1h2m");
        assert_eq!(human_secs(-3.0), "-3s");
        assert_eq!(human_secs(90061.0), "1d1h");
        assert_eq!(human_secs(61.0), "1m1s");
    }
}
