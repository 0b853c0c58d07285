//! The README stays true: its configuration table lists every variable the relay reads, with
//! the right default, and its API reference shows every route.

use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

#[test]
fn configuration_table_lists_every_variable_with_its_default() {
    let text = readme();
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect();
    let vars = rlay::config::variables();
    assert!(
        vars.len() > 20,
        "the settings are read from clap's definitions"
    );
    for v in &vars {
        let row = rows
            .iter()
            .find(|r| r[0] == v.name)
            .unwrap_or_else(|| panic!("README's configuration table lacks {}", v.name));
        assert_eq!(row[1], v.default, "README default of {}", v.name);
        assert_eq!(
            row[2].trim_end_matches('.'),
            v.help.trim_end_matches('.'),
            "README meaning of {}",
            v.name
        );
    }
    for r in &rows {
        assert!(
            vars.iter().any(|v| v.name == r[0]),
            "README documents {} which the relay does not read",
            r[0]
        );
    }
}

#[test]
fn api_reference_shows_every_route() {
    let text = readme();
    // The route table is the one list of routes; every one has a curl (or websocat) example.
    assert!(rlay::http::routes::ROUTES.len() > 30);
    for r in rlay::http::routes::ROUTES {
        let shown = if r.path == "/" { "\"$R/\"" } else { r.path };
        assert!(
            text.lines()
                .any(|l| (l.starts_with("curl") || l.starts_with("websocat")) && l.contains(shown)),
            "README has no curl example for {} {}",
            r.verb.as_str(),
            r.path
        );
    }
}
