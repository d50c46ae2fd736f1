//! `tenetctl policy new NAME`: scaffolds a policy module crate that builds
//! and passes `tenetctl policy test` as generated: a stage skeleton with
//! typed settings and unit tests, its settings schema, a pipeline to try
//! it in, two golden cases and a README with the commands.

use std::path::{Path, PathBuf};

use super::CtlError;

/// Arguments of `tenetctl policy new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The module's name (its crate and stage name): [a-z][a-z0-9-]*.
    pub name: String,
    /// Where to create the crate (default: ./NAME).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The SDK as a path dependency (default: this tenet's source tree's
    /// guests/sdk when it exists, else `tenet-policy-sdk` from the registry).
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("scaffold/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("scaffold/lib.rs.tmpl")),
    (
        "settings.schema.json",
        include_str!("scaffold/settings.schema.json"),
    ),
    ("pipeline.toml", include_str!("scaffold/pipeline.toml.tmpl")),
    (
        "tests/golden/allowed.json",
        include_str!("scaffold/allowed.json.tmpl"),
    ),
    (
        "tests/golden/denied.json",
        include_str!("scaffold/denied.json.tmpl"),
    ),
    ("README.md", include_str!("scaffold/README.md.tmpl")),
    (".gitignore", include_str!("scaffold/gitignore.tmpl")),
];

fn valid_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.ends_with('-')
}

/// `quota-guard` → `QuotaGuard`.
fn type_name(n: &str) -> String {
    n.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The SDK dependency line.
fn sdk_dependency(explicit: Option<&Path>) -> Result<String, CtlError> {
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/sdk");
    let path = match explicit {
        Some(p) => Some(p.to_owned()),
        None => in_tree.join("Cargo.toml").is_file().then_some(in_tree),
    };
    Ok(match path {
        Some(p) => {
            let p = p
                .canonicalize()
                .map_err(|e| CtlError::Message(format!("--sdk-path {}: {e}", p.display())))?;
            if !p.join("Cargo.toml").is_file() {
                return Err(CtlError::Message(format!(
                    "--sdk-path {}: no Cargo.toml there",
                    p.display()
                )));
            }
            format!("{{ path = {:?} }}", p.display().to_string())
        }
        None => "\"0.2\"".to_owned(),
    })
}

/// Runs `tenetctl policy new`.
pub fn run(args: &NewArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    if !valid_name(&args.name) {
        return Err(CtlError::Message(format!(
            "NAME: {:?} is not a module name (1-63 of [a-z0-9-], starting with a letter)",
            args.name
        )));
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(CtlError::Message(format!(
            "{}: exists and is not empty; choose another --dir",
            dir.display()
        )));
    }
    let sdk = sdk_dependency(args.sdk_path.as_deref())?;
    let file = args.name.replace('-', "_");
    let ty = type_name(&args.name);
    for (rel, tmpl) in FILES {
        let text = tmpl
            .replace("{{name}}", &args.name)
            .replace("{{file}}", &file)
            .replace("{{type}}", &ty)
            .replace("{{sdk}}", &sdk);
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CtlError::Message(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| CtlError::Message(format!("{}: {e}", path.display())))?;
    }
    let d = dir.display();
    writeln!(
        out,
        "created {d} (module {name}, SDK {sdk})\n\nnext:\n  cd {d}\n  cargo test\n  cargo build --release --target wasm32-wasip2\n  tenetctl policy test --module-dir <tenet modules> tests/golden",
        name = args.name
    )
    .map_err(CtlError::from_err)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert!(valid_name("quota-guard"));
        assert!(!valid_name("Quota") && !valid_name("9x") && !valid_name("a-") && !valid_name(""));
        assert_eq!(type_name("quota-guard"), "QuotaGuard");
        assert_eq!(type_name("x"), "X");
    }

    #[test]
    fn scaffolds_every_file_and_refuses_a_non_empty_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("quota-guard");
        let args = NewArgs {
            name: "quota-guard".into(),
            dir: Some(dir.clone()),
            sdk_path: None,
        };
        let mut out = Vec::new();
        assert_eq!(run(&args, &mut out).unwrap(), 0);
        for (rel, _) in FILES {
            let text = std::fs::read_to_string(dir.join(rel)).unwrap();
            assert!(!text.contains("{{"), "{rel} has an unfilled placeholder");
        }
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("export_stage!(QuotaGuard"));
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("guests/sdk"), "{cargo}");
        assert!(
            run(&args, &mut out)
                .unwrap_err()
                .to_string()
                .contains("not empty")
        );
    }
}
