package cost

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }

func TestCompute(t *testing.T) {
	tests := []struct {
		name                 string
		hourly               Price
		tp                   Throughput
		load                 float64
		wantOutLo, wantOutHi float64
		wantTotal            float64 // low end
		wantReplicas         int
		wantMonthlyLo        float64
	}{
		// $9.60/h at 1000 out tok/s: 3.6M tokens an hour, $2.67 per million.
		{"v5e-8 on demand", Fixed(9.60), Throughput{1000, 1500}, 2500, 9.60 / 3.6, 9.60 / 3.6, 9.60 / 5.4, 3, 3 * 9.60 * 730},
		{"h100 range", Price{10, 13}, Throughput{800, 800}, 0, 10 / 2.88, 13 / 2.88, 10 / 2.88, 1, 10 * 730},
		{"exactly one replica of load", Fixed(2), Throughput{500, 600}, 500, 2 / 1.8, 2 / 1.8, 2 / 2.16, 1, 2 * 730},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Compute(tc.hourly, tc.tp, tc.load, HoursPerMonth)
			if err != nil {
				t.Fatal(err)
			}
			if !near(e.PerMillionOutput.Low, tc.wantOutLo) || !near(e.PerMillionOutput.High, tc.wantOutHi) {
				t.Errorf("$/1M out %v, want %v–%v", e.PerMillionOutput, tc.wantOutLo, tc.wantOutHi)
			}
			if !near(e.PerMillionTotal.Low, tc.wantTotal) {
				t.Errorf("$/1M total %v, want %v", e.PerMillionTotal, tc.wantTotal)
			}
			if e.Replicas != tc.wantReplicas || !near(e.Monthly.Low, tc.wantMonthlyLo) {
				t.Errorf("replicas %d monthly %v, want %d %v", e.Replicas, e.Monthly, tc.wantReplicas, tc.wantMonthlyLo)
			}
		})
	}
}

func TestBadInputsAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		field string
	}{
		{"zero price", func() error { _, err := Compute(Fixed(0), Throughput{1, 1}, 0, 730); return err }(), "hourly-price"},
		{"inverted range", func() error { _, err := Compute(Price{5, 4}, Throughput{1, 1}, 0, 730); return err }(), "hourly-price"},
		{"zero throughput", func() error { _, err := Compute(Fixed(1), Throughput{0, 0}, 0, 730); return err }(), "throughput"},
		{"total below output", func() error { _, err := Compute(Fixed(1), Throughput{10, 5}, 0, 730); return err }(), "throughput"},
		{"negative load", func() error { _, err := Compute(Fixed(1), Throughput{1, 1}, -1, 730); return err }(), "load-tps"},
		{"hours", func() error { _, err := Compute(Fixed(1), Throughput{1, 1}, 0, 800); return err }(), "hours-per-month"},
		{"unknown key", func() error { _, err := CatalogueReport(map[string]Throughput{"a100": {1, 1}}, 0, 730); return err }(), "a100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, ErrInput) || !strings.Contains(tc.err.Error(), tc.field) {
				t.Errorf("err = %v, want ErrInput naming %s", tc.err, tc.field)
			}
		})
	}
}

func TestParsePrice(t *testing.T) {
	for in, want := range map[string]Price{"9.60": Fixed(9.6), "$2": Fixed(2), "10-13": {10, 13}, " 10 - 13 ": {10, 13}} {
		got, err := ParsePrice(in)
		if err != nil || got != want {
			t.Errorf("ParsePrice(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "free", "-3", "0", "13-10", "5-x"} {
		if _, err := ParsePrice(bad); !errors.Is(err, ErrInput) {
			t.Errorf("ParsePrice(%q) accepted", bad)
		}
	}
}

func TestCatalogueTable(t *testing.T) {
	byKey := map[string]Throughput{"v5e-8": {1000, 1500}, "h100": {800, 1000}}
	rows, err := CatalogueReport(byKey, 2500, HoursPerMonth)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(Catalogue) {
		t.Fatalf("%d rows", len(rows))
	}
	for _, r := range rows {
		if (r.Estimate != nil) != (r.Option.Key != "v5e-4" && r.Option.Key != "v5e-4-int8") {
			t.Errorf("%s %s: estimate %v", r.Option.Key, r.Option.Pricing, r.Estimate)
		}
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rows, byKey, 2500); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"$9.60", "$2.67", // 9.60 / 3.6
		"$2.00", "$0.56", // 2 / 3.6
		"a3-highgpu-1g", "$10.00–13.00", "$3.47–4.51", // 10/2.88 – 13/2.88
		"$21024.00", // 3 × 9.60 × 730
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "ct5lp-hightpu-4t") && (strings.Count(line, " - ") < 3 || !strings.Contains(line, "$")) {
			t.Errorf("v5e-4 has no result, yet: %q", line)
		}
	}
}

// TestCatalogue27BInt8OnV5e4: the catalogue prices 27B with int8 weights on a v5e-4 under
// its own key (a bf16 v5e-4 result is not priced as it, nor the reverse), on demand and
// Spot, and labels the rows with what they serve.
func TestCatalogue27BInt8OnV5e4(t *testing.T) {
	if got := strings.Join(CatalogueKeys(), ","); got != "h100,v5e-4,v5e-4-int8,v5e-8" {
		t.Fatalf("catalogue keys %s", got)
	}
	byKey := map[string]Throughput{"v5e-4-int8": {480, 960}}
	rows, err := CatalogueReport(byKey, 0, HoursPerMonth)
	if err != nil {
		t.Fatal(err)
	}
	priced := map[string]Estimate{}
	for _, r := range rows {
		if (r.Estimate != nil) != (r.Option.Key == "v5e-4-int8") {
			t.Errorf("%s %s: estimate %v", r.Option.Key, r.Option.Pricing, r.Estimate)
		}
		if r.Estimate != nil {
			priced[r.Option.Pricing] = *r.Estimate
		}
	}
	// $4.80/h at 480 output tok/s: 4.80 / (480 · 3600) · 1e6 = $2.78 per 1M; Spot $1.00: $0.58.
	if e := priced["on-demand"]; math.Abs(e.PerMillionOutput.Low-4.80/(480*3600)*1e6) > 1e-9 || e.Monthly.Low != 4.80*HoursPerMonth {
		t.Errorf("on-demand estimate %+v", e)
	}
	if e := priced["spot"]; math.Abs(e.PerMillionOutput.Low-1.00/(480*3600)*1e6) > 1e-9 {
		t.Errorf("spot estimate %+v", e)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rows, byKey, 0); err != nil {
		t.Fatal(err)
	}
	var int8Lines int
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.Contains(line, "27B int8, TP 4") {
			int8Lines++
			if !strings.Contains(line, "ct5lp-hightpu-4t") || !strings.Contains(line, "480.0") {
				t.Errorf("int8 row: %q", line)
			}
		}
	}
	if int8Lines != 2 {
		t.Errorf("%d rows for 27B int8 on the v5e-4, want 2 (on-demand, Spot):\n%s", int8Lines, b.String())
	}
	if _, err := CatalogueReport(map[string]Throughput{"v5e-4-bf16": {1, 1}}, 0, HoursPerMonth); err == nil || !strings.Contains(err.Error(), "v5e-4-int8") {
		t.Errorf("unknown key: %v (want an error listing the keys)", err)
	}
}
