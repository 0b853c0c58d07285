fn main() {
    println!("rlay {}", env!("CARGO_PKG_VERSION"));
}
