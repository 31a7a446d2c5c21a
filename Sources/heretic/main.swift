import HereticBench
let a = CommandLine.arguments
if a[1] == "sleep" {
let r = try SleepBenchmark(tasks: Int(a[2])!, periodMilliseconds: Int(a[3])!).run()
print(r.table)
} else if a[1] == "async" {
let r = try AsyncEventsBenchmark(tasks: Int(a[2])!, seconds: Double(a[3]) ?? 3).run()
print(r.table)
} else {
let r = try EventsBenchmark(tasks: Int(CommandLine.arguments[1])!, cores: 1, seconds: Double(CommandLine.arguments[2])!).run()
print(r.table)
}
