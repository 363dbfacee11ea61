{
	admin localhost:7193
	auto_https off
}
:7141 {
	write_guard
	reverse_proxy 127.0.0.1:7104
}
:7142 {
	write_guard
	reverse_proxy 127.0.0.1:7106
}
