package reskey_test

import (
	"fmt"

	"github.com/writeguard/caddy-writeguard/reskey"
)

func Example() {
	// Spellings of one resource give one key.
	for _, p := range []string{"/docs/a", "//docs/./a/", "/docs/x/%2E%2E/%61"} {
		fmt.Println(reskey.Host("Example.com:443") + reskey.Path(p, reskey.Options{}))
	}
	// An encoded slash is data, not a separator.
	fmt.Println(reskey.Path("/docs%2fa", reskey.Options{}))
	// Query parameters keep their order.
	fmt.Println(reskey.Query("id=2&id=%31"))
	// Output:
	// example.com/docs/a
	// example.com/docs/a
	// example.com/docs/a
	// /docs/a
	// id=2&id=1
}

func ExamplePath_options() {
	fmt.Println(reskey.Path("/Files/Report.PDF/", reskey.Options{}))
	fmt.Println(reskey.Path("/Files/Report.PDF/", reskey.Options{KeepTrailingSlash: true}))
	fmt.Println(reskey.Path("/Files/Report.PDF/", reskey.Options{CaseInsensitive: true}))
	// Output:
	// /Files/Report.PDF
	// /Files/Report.PDF/
	// /files/report.pdf
}
