//! Unknown keys: the config text is deserialized with every key the schema does not
//! know set aside (serde_ignored), and each one becomes a [`Problem`] located like any
//! other (`routes[1] "bi-export": alow: …`, with its line and the keys the section
//! takes), so a typo is reported together with the problems of the rest of the file.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::Problem;
use super::schema::{
    Admin, Callers, Coordination, File, Group, Inject, Intercept, Log, Reload, RouteSpec, SecretSpec, Server,
    ServerTls, Verify,
};

/// One step of a key's path in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Parses config text into the schema, and returns every unknown key as a problem.
pub(super) fn parse(text: &str) -> Result<(File, Vec<Problem>), toml::de::Error> {
    let mut paths = Vec::new();
    let file: File = serde_ignored::deserialize(toml::Deserializer::new(text), |path| {
        let mut segments = Vec::new();
        segments_of(&path, &mut segments);
        paths.push(segments);
    })?;
    let problems = if paths.is_empty() { Vec::new() } else { problems(text, &file, &paths) };
    Ok((file, problems))
}

fn segments_of(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            segments_of(parent, out);
            out.push(Segment::Index(*index));
        }
        Path::Map { parent, key } => {
            segments_of(parent, out);
            out.push(Segment::Key(key.clone()));
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            segments_of(parent, out)
        }
    }
}

fn problems(text: &str, file: &File, paths: &[Vec<Segment>]) -> Vec<Problem> {
    // Only parsed again (for positions) when there is something to report.
    let doc = toml_edit::ImDocument::parse(text).ok();
    paths
        .iter()
        .filter_map(|path| {
            let (last, parent) = path.split_last()?;
            let (location, field) = locate(file, parent, last);
            let mut message = String::from("unknown key");
            if let Some(offset) = doc.as_ref().and_then(|d| key_offset(d, path)) {
                let (line, column) = line_column(text, offset);
                message.push_str(&format!(" at line {line}, column {column}"));
            }
            if let Some(keys) = section_keys(parent) {
                message.push_str(&format!("; the keys here are {}", keys.join(", ")));
            }
            Some(Problem { location, field, message })
        })
        .collect()
}

/// The problem location and field of an unknown key: `routes[I] "NAME"` for anything
/// inside a route (the field is the rest of the path, `inject.headr`), otherwise the
/// section's dotted name and the key.
fn locate(file: &File, parent: &[Segment], last: &Segment) -> (String, String) {
    let text = |s: &Segment| match s {
        Segment::Key(k) => k.clone(),
        Segment::Index(i) => i.to_string(),
    };
    if let [Segment::Key(routes), Segment::Index(i), rest @ ..] = parent {
        if routes == "routes" {
            let name = file.routes.get(*i).and_then(|r| r.name.clone()).unwrap_or_default();
            let field: Vec<String> = rest.iter().chain([last]).map(text).collect();
            return (format!("routes[{i}] {name:?}"), field.join("."));
        }
    }
    (parent.iter().map(text).collect::<Vec<_>>().join("."), text(last))
}

/// The keys the section at `parent` takes, from the schema itself.
fn section_keys(parent: &[Segment]) -> Option<&'static [&'static str]> {
    let names: Vec<&str> = parent
        .iter()
        .map(|s| match s {
            Segment::Key(k) => k.as_str(),
            Segment::Index(_) => "[]",
        })
        .collect();
    Some(match names.as_slice() {
        [] => keys_of::<File>(),
        ["server"] => keys_of::<Server>(),
        ["server", "tls"] => keys_of::<ServerTls>(),
        ["server", "intercept"] => keys_of::<Intercept>(),
        ["admin"] => keys_of::<Admin>(),
        ["log"] => keys_of::<Log>(),
        ["reload"] => keys_of::<Reload>(),
        ["coordination"] => keys_of::<Coordination>(),
        ["callers"] => keys_of::<Callers>(),
        ["callers", "groups", _] => keys_of::<Group>(),
        ["secrets", _] => keys_of::<SecretSpec>(),
        ["routes", "[]"] => keys_of::<RouteSpec>(),
        ["routes", "[]", "inject"] => keys_of::<Inject>(),
        ["routes", "[]", "verify"] => keys_of::<Verify>(),
        _ => return None,
    })
}

/// Where the unknown key at `path` starts in the text.
fn key_offset(doc: &toml_edit::ImDocument<&str>, path: &[Segment]) -> Option<usize> {
    let (Segment::Key(last), parent) = path.split_last()? else { return None };
    let mut item = doc.as_item();
    for segment in parent {
        item = match segment {
            Segment::Key(k) => item.get(k.as_str())?,
            Segment::Index(i) => item.get(*i)?,
        };
    }
    let key = match item {
        toml_edit::Item::Table(t) => t.key(last),
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.key(last),
        _ => None,
    }?;
    key.span().map(|s| s.start)
}

/// The 1-based line and column of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The field names serde's derive gives a struct: its deserializer is asked for them.
fn keys_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records the field list a struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(text: &str) -> Vec<String> {
        let (_, problems) = parse(text).unwrap();
        problems.iter().map(|p| format!("{}|{}|{}", p.location, p.field, p.message)).collect()
    }

    #[test]
    fn every_unknown_key_is_located_with_its_line_and_the_section_keys() {
        let text = "serverr = 1\n[server]\nlisten = \"127.0.0.1:1\"\n[server.limits]\nmax = 1\n\
                    [callers.groups.etl]\ncidr = []\n[secrets.k]\nfille = \"x\"\n\
                    [[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\nalow = []\n\
                    inject = { headr = \"x\" }\n[server.intercept]\ncert = \"c\"\nkey = \"k\"\nkye = \"k\"\n";
        let found = unknown(text);
        let expect = [
            ("", "serverr", "line 1, column 1", "server, admin, log"),
            ("server", "limits", "line 4, column 9", "listen, header_timeout"),
            ("callers.groups.etl", "cidr", "line 7, column 1", "cidrs, identities"),
            ("secrets.k", "fille", "line 9, column 1", "file, env, value"),
            ("routes[1] \"b\"", "alow", "line 14, column 1", "name, host, prefix, preset"),
            ("routes[1] \"b\"", "inject.headr", "line 15, column 12", "header, format, query"),
            ("server.intercept", "kye", "line 19, column 1", "the keys here are cert, key"),
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for (location, field, at, keys) in expect {
            assert!(
                found
                    .iter()
                    .any(|f| f.starts_with(&format!("{location}|{field}|unknown key at {at}"))
                        && f.contains(keys)),
                "no {location}|{field} at {at} with {keys} in {found:#?}"
            );
        }
    }

    #[test]
    fn a_known_file_has_no_unknown_keys_and_the_schema_lists_its_fields() {
        assert!(unknown("[server]\nlisten = \"127.0.0.1:1\"\n[[routes]]\nname = \"a\"\n").is_empty());
        assert!(keys_of::<RouteSpec>().contains(&"shadow_allow"));
        assert!(keys_of::<RouteSpec>().contains(&"host"));
        let intercept = "[server.intercept]\ncert = \"c\"\nkey = \"k\"\n[[routes]]\nhost = \"a.example\"\n";
        assert!(unknown(intercept).is_empty());
        assert!(keys_of::<File>().contains(&"routes"));
    }

    #[test]
    fn the_vendor_limit_keys_are_known_and_their_typos_reported() {
        let known = "[coordination]\nredis = \"redis://127.0.0.1:1\"\n[[routes]]\nname = \"a\"\n\
                     batch_concurrency = 2\nbatch_retries = 1\nupdate_status_ttl = \"5s\"\n";
        assert!(unknown(known).is_empty(), "{:#?}", unknown(known));
        let typos = "[coordination]\nredsi = \"x\"\n[[routes]]\nname = \"a\"\nbatch_concurency = 2\n";
        let found = unknown(typos);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("coordination|redsi|unknown key at line 2") && found[0].contains("redis")
        );
        assert!(
            found[1].starts_with("routes[0] \"a\"|batch_concurency|unknown key at line 5")
                && found[1].contains("batch_concurrency, batch_retries, update_status_ttl"),
            "{found:#?}"
        );
    }
}
