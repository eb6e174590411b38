fn main() {
    println!("overinterp");
}
