//! The xDS protocols of one stream as plain data, no I/O and no clock: [`sotw`] (state of the
//! world) and [`delta`] (incremental) decide what each request means and what is owed, and the
//! stream drivers (`stream`) act on it. They read the snapshot's resource maps and
//! nothing above them.

pub mod delta;
pub mod sotw;

/// The state of `type_url` in a stream's map, made empty the first time: the URL is copied only
/// then, not on every request and response (`entry` takes an owned key).
fn type_state<'a, T: Default>(
    types: &'a mut std::collections::BTreeMap<String, Box<T>>,
    type_url: &str,
) -> &'a mut T {
    if !types.contains_key(type_url) {
        types.insert(type_url.to_string(), Box::default());
    }
    types.get_mut(type_url).expect("inserted above")
}
