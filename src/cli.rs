//! Command-line arguments: `rlay <command> [--flag value | --flag=value | --switch] [positional]`.
//! Flags may repeat (`--fault a --fault b`).

#[derive(Debug, Clone, Default)]
pub struct Args {
    pub command: Option<String>,
    flags: Vec<(String, String)>,
    pub positional: Vec<String>,
}

impl Args {
    pub fn parse<I: IntoIterator<Item = String>>(items: I) -> Args {
        let mut out = Args::default();
        let mut it = items.into_iter().peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    out.flags.push((k.to_owned(), v.to_owned()));
                } else if it.peek().is_some_and(|n| !n.starts_with("--")) {
                    let v = it.next().unwrap_or_default();
                    out.flags.push((name.to_owned(), v));
                } else {
                    out.flags.push((name.to_owned(), "true".to_owned()));
                }
            } else if out.command.is_none() {
                out.command = Some(a);
            } else {
                out.positional.push(a);
            }
        }
        out
    }

    /// The last value given for a flag.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for a repeatable flag.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.flag(name).is_some()
    }

    /// The first flag not in `known`, so a typo is reported instead of silently ignored.
    pub fn unknown_flag<'a>(&'a self, known: &[&str]) -> Option<&'a str> {
        self.flags
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !known.contains(k))
    }
}
