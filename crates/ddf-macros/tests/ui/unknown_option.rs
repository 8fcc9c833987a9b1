#[ddf::cache_with_invalidation(tll = 60)]
fn services(name: &str) -> Vec<String> {
    vec![name.to_owned()]
}

fn main() {
    services("web");
}
