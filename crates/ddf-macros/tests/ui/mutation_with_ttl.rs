#[ddf::cache_with_invalidation(ttl = 60, invalidate_on = ["services:"])]
fn add_service(name: &str) -> Result<(), String> {
    let _ = name;
    Ok(())
}

#[ddf::cache_with_invalidation(cache_none)]
fn count(name: &str) -> usize {
    name.len()
}

fn main() {
    let _ = add_service("web");
    let _ = count("web");
}
