import HereticBench
let r = try EventsBenchmark(tasks: Int(CommandLine.arguments[1])!, cores: 1, seconds: Double(CommandLine.arguments[2])!).run()
print(r.table)
