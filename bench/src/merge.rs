//! `--only` into an existing `benchmarks.md`: the sections run now replace their tables;
//! every other section's table and notes are kept from the previous report, so that
//! re-running one section does not erase the figures of the others.
//!
//! Owns: reading the previous report's results back. Must never: change a kept figure.

/// The tables (`### heading` → block, in order) and the notes (`* …` lines) of a report's
/// `## Results`.
#[derive(Debug, Default)]
pub struct Results {
    /// (heading line, the whole block including it).
    pub tables: Vec<(String, String)>,
    /// Note lines without the leading `* `.
    pub notes: Vec<String>,
}

/// Reads the `## Results` part of a rendered report.
pub fn parse(md: &str) -> Results {
    let mut r = Results::default();
    let Some(start) = md.find("\n## Results\n") else {
        return r;
    };
    let body = &md[start + "\n## Results\n".len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let (tables, notes) = match body.find("\n### Notes from this run\n") {
        Some(i) => (&body[..i], &body[i + "\n### Notes from this run\n".len()..]),
        None => (body, ""),
    };
    for block in tables.split("\n### ").skip(1) {
        let heading = block.lines().next().unwrap_or("").to_string();
        r.tables
            .push((heading, format!("\n### {}\n", block.trim_end())));
    }
    r.notes = notes
        .lines()
        .filter_map(|l| l.strip_prefix("* "))
        .map(str::to_string)
        .collect();
    r
}

/// The tables of `new` plus those of `old` whose heading `new` lacks, ordered by heading;
/// the notes of `new` plus those of `old` that do not begin with `prefixes` (the notes a
/// re-run section writes).
pub fn merge(old: &Results, new: &Results, prefixes: &[&str]) -> (String, Vec<String>) {
    let mut tables: Vec<&(String, String)> = new.tables.iter().collect();
    for t in &old.tables {
        if !new.tables.iter().any(|n| n.0 == t.0) {
            tables.push(t);
        }
    }
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    let text: String = tables.iter().map(|t| t.1.as_str()).collect();
    let mut notes: Vec<String> = old
        .notes
        .iter()
        .filter(|n| !prefixes.iter().any(|p| n.starts_with(p)))
        .cloned()
        .collect();
    notes.extend(new.notes.iter().cloned());
    (text, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_sections_not_rerun() {
        let old = "# B\n\n## Results\n\n### 1. A\n\n| a |\n\n### 8. N\n\n| old |\n\n\
                   ### Notes from this run\n\n* about A\n* Neon old\n\n## Plots\n\nx\n";
        let new = "# B\n\n## Results\n\n### 8. N\n\n| new |\n\n\
                   ### Notes from this run\n\n* Neon new\n\n## Plots\n";
        let (t, n) = merge(&parse(old), &parse(new), &["Neon"]);
        assert_eq!(t, "\n### 1. A\n\n| a |\n\n### 8. N\n\n| new |\n");
        assert_eq!(n, vec!["about A".to_string(), "Neon new".to_string()]);
    }
}
