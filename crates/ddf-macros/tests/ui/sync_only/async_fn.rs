#[ddf::cache_with_invalidation(ttl = 60)]
async fn services(name: &str) -> Vec<String> {
    vec![name.to_owned()]
}

fn main() {}
