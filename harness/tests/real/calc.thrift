service Calc {
  i32 add(1: i32 a, 2: i32 b),
  string echo(1: string s),
  void ping(),
}
