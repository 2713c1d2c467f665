//! Layering of the settings, once for all of them: flag > environment > config file > default.
//!
//! clap reads the flags and the environment ([`ServeArgs`] keeps what was given either way, as
//! clap read it). The file's keys are the flags' long names; its values become arguments again and
//! everything is parsed once more by the same clap command, so a setting means the same and is
//! checked the same wherever it comes from, and a new flag is layerable with nothing to add here.

use super::{ServeArgs, Settings};
use anyhow::{Context, Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;

/// The id (and long name) of the `--config` argument, the one setting the file cannot hold.
pub(super) const CONFIG: &str = "config";

/// Values of arguments by argument id, as text (what a flag, a variable or a file key gave).
type Values = BTreeMap<String, Vec<OsString>>;

/// The settings after layering, with the ids of the ones given (by flag, environment or file)
/// rather than left at their defaults.
#[derive(Debug)]
pub(super) struct Layered {
    /// Every setting.
    pub settings: Settings,
    /// Ids (field names) of the arguments that were given.
    pub given: BTreeSet<String>,
}

/// The clap command of the settings, without `--config` and without environment fallbacks: the
/// layers are already resolved into its arguments.
fn settings_command() -> Command {
    Settings::augment_args(Command::new("serve")).mut_args(|a| a.env(None))
}

/// `concord serve`'s arguments: `--config` and every setting.
pub(super) fn serve_command() -> Command {
    ServeArgs::augment_args(Command::new("serve"))
}

/// What the flags and environment gave, by argument id.
pub(super) fn given(m: &ArgMatches) -> Vec<(String, Vec<OsString>)> {
    serve_command()
        .get_arguments()
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            match m.value_source(id)? {
                ValueSource::DefaultValue => None,
                _ => {
                    let raw = m.get_raw(id)?.map(ToOwned::to_owned).collect();
                    Some((id.to_string(), raw))
                }
            }
        })
        .collect()
}

/// Layers the file named by `--config` (if any) under what flags and environment gave.
pub(super) fn layer(given: &[(String, Vec<OsString>)]) -> Result<Layered> {
    let cmd = settings_command();
    let mut values: Values = given
        .iter()
        .filter(|(id, _)| id != CONFIG)
        .cloned()
        .collect();
    if let Some((_, path)) = given.iter().find(|(id, _)| id == CONFIG)
        && let Some(path) = path.last()
    {
        for (id, file_values) in read_file(&cmd, Path::new(path))? {
            values.entry(id).or_insert(file_values);
        }
    }
    let settings = parse(&cmd, &values)?;
    Ok(Layered {
        settings,
        given: values.into_keys().collect(),
    })
}

/// Parses `values` as if given on the command line; the rest take their defaults.
fn parse(cmd: &Command, values: &Values) -> Result<Settings> {
    let mut argv = vec![OsString::from("serve")];
    for arg in cmd.get_arguments() {
        let Some(vals) = values.get(arg.get_id().as_str()) else {
            continue;
        };
        let long = arg
            .get_long()
            .with_context(|| format!("setting {} has no --flag", arg.get_id()))?;
        match arg.get_action() {
            // A switch: present or not.
            ArgAction::SetTrue => match vals.last().and_then(|v| v.to_str()) {
                Some("true") => argv.push(format!("--{long}").into()),
                Some("false") => {}
                _ => bail!("--{long} is true or false"),
            },
            ArgAction::Set | ArgAction::Append => {
                for v in vals {
                    let mut a = OsString::from(format!("--{long}="));
                    a.push(v);
                    argv.push(a);
                }
            }
            other => bail!("--{long}: argument action {other:?} cannot be layered"),
        }
    }
    let m = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| anyhow!(clap_message(&e)))?;
    Settings::from_arg_matches(&m).map_err(|e| anyhow!(clap_message(&e)))
}

/// The first line of a clap error, without clap's `error: ` and usage lines: it is wrapped in
/// the context of the file and key.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The settings in a TOML file, by argument id; each key is checked to parse as its flag would.
fn read_file(cmd: &Command, path: &Path) -> Result<Values> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let invalid = || format!("invalid config file {}", path.display());
    let table: toml::Table = toml::from_str(&text).with_context(invalid)?;
    let mut values = Values::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .with_context(|| {
                format!(
                    "unknown key {key:?}: keys are the long names of `concord serve` flags \
                     (see --help), e.g. node-id = 2"
                )
            })
            .with_context(invalid)?;
        let id = arg.get_id().to_string();
        let one = || -> Result<Vec<OsString>> {
            let vals = file_values(&value, matches!(arg.get_action(), ArgAction::Append))?;
            parse(cmd, &Values::from([(id.clone(), vals.clone())]))?;
            Ok(vals)
        };
        let vals = one()
            .with_context(|| format!("key {key:?}"))
            .with_context(invalid)?;
        values.insert(id, vals);
    }
    Ok(values)
}

/// A TOML value as argument text: scalars as written, a list only for a repeatable flag.
fn file_values(value: &toml::Value, repeatable: bool) -> Result<Vec<OsString>> {
    let scalar = |v: &toml::Value| -> Result<OsString> {
        Ok(match v {
            toml::Value::String(s) => s.into(),
            toml::Value::Integer(i) => i.to_string().into(),
            toml::Value::Float(f) => f.to_string().into(),
            toml::Value::Boolean(b) => b.to_string().into(),
            _ => bail!("expected a string, a number or a boolean"),
        })
    };
    match value {
        toml::Value::Array(items) if repeatable => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => bail!("expected one value, not a list"),
        v => Ok(vec![scalar(v)?]),
    }
}
