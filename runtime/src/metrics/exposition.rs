//! The Prometheus text exposition format, version 0.0.4: what [`super::Metrics::render`]
//! writes, one family at a time.

use std::fmt::Write as _;

/// A Prometheus histogram with fixed upper bounds (the `+Inf` bucket is implicit).
#[derive(Debug, Clone)]
pub(super) struct Histogram {
    /// Upper bounds, increasing.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more slot than `bounds`, for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub(super) fn new(bounds: Vec<f64>) -> Self {
        let counts = vec![0; bounds.len() + 1];
        Histogram {
            bounds,
            counts,
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation; NaN is ignored (it would poison `_sum` for good).
    pub(super) fn observe(&mut self, value: f64) {
        if value.is_nan() {
            return;
        }
        // Buckets are "less than or equal": the first bound >= value takes it.
        let slot = self.bounds.partition_point(|&bound| bound < value);
        self.counts[slot] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// A float as the exposition format wants it: shortest round-trip decimal, `+Inf`,
/// `-Inf`, `NaN`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

/// Label names and values of one sample.
pub(super) type Labels<'a> = &'a [(&'a str, &'a str)];

/// `{a="x",b="y"}`, values escaped as the format wants; nothing without labels.
fn label_set(labels: Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let pairs: Vec<String> = labels
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: Labels, value: f64) {
    let _ = writeln!(out, "{name}{} {}", label_set(labels), number(value));
}

pub(super) fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    gauges(out, name, help, &[(&[], value)]);
}

/// A gauge family with one sample per label set.
pub(super) fn gauges(out: &mut String, name: &str, help: &str, samples: &[(Labels, f64)]) {
    header(out, name, help, "gauge");
    for (labels, value) in samples {
        sample(out, name, labels, *value);
    }
}

/// Counters are floats too: CPU seconds are.
pub(super) fn counter(out: &mut String, name: &str, help: &str, value: f64) {
    counters(out, name, help, &[(&[], value)]);
}

/// A counter family with one sample per label set.
pub(super) fn counters(out: &mut String, name: &str, help: &str, samples: &[(Labels, f64)]) {
    header(out, name, help, "counter");
    for (labels, value) in samples {
        sample(out, name, labels, *value);
    }
}

pub(super) fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    histograms(out, name, help, &[(&[], h)]);
}

/// A histogram family with one histogram per label set.
pub(super) fn histograms(out: &mut String, name: &str, help: &str, all: &[(Labels, &Histogram)]) {
    header(out, name, help, "histogram");
    let bucket = format!("{name}_bucket");
    for (labels, h) in all {
        let with_le = |le: &str| {
            let mut l = labels.to_vec();
            l.push(("le", le));
            label_set(&l)
        };
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count;
            let _ = writeln!(out, "{bucket}{} {cumulative}", with_le(&number(*bound)));
        }
        let _ = writeln!(out, "{bucket}{} {}", with_le("+Inf"), h.count);
        sample(out, &format!("{name}_sum"), labels, h.sum);
        sample(out, &format!("{name}_count"), labels, h.count as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_numbers() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.1), "0.1");
        assert_eq!(number(3.0), "3");
    }

    #[test]
    fn labels_are_escaped() {
        let mut out = String::new();
        gauges(
            &mut out,
            "g",
            "help",
            &[(&[("a", "x"), ("b", "q\"\\\n")], 1.5), (&[], 2.0)],
        );
        assert_eq!(
            out,
            "# HELP g help\n# TYPE g gauge\ng{a=\"x\",b=\"q\\\"\\\\\\n\"} 1.5\ng 2\n"
        );
    }
}
