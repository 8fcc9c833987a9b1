// An argument whose type is not serde::Serialize cannot be part of the key.
struct Connection;

#[ddf::cache_with_invalidation(ttl = 60)]
fn services(conn: &Connection, name: &str) -> Vec<String> {
    let _ = conn;
    vec![name.to_owned()]
}

fn main() {
    services(&Connection, "web");
}
