package cost

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
)

// ErrInput is wrapped by every error about a bad input value.
var ErrInput = errors.New("cost: invalid input")

// HoursPerMonth is the usual cloud billing month (8760 h / 12).
const HoursPerMonth = 730

// Price is an hourly price in USD, possibly a range (Low < High) when only an estimate
// is known, such as "H100 ≈ $10–13/h".
type Price struct{ Low, High float64 }

// Fixed is a price without a range.
func Fixed(usd float64) Price { return Price{usd, usd} }

// ParsePrice reads "9.60" or a range "10-13".
func ParsePrice(s string) (Price, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "$")
	lo, hi, isRange := strings.Cut(s, "-")
	l, err := strconv.ParseFloat(strings.TrimSpace(lo), 64)
	if err != nil {
		return Price{}, fmt.Errorf("%w: hourly-price: %q is not USD or a range like 10-13", ErrInput, s)
	}
	h := l
	if isRange {
		if h, err = strconv.ParseFloat(strings.TrimSpace(hi), 64); err != nil {
			return Price{}, fmt.Errorf("%w: hourly-price: %q is not USD or a range like 10-13", ErrInput, s)
		}
	}
	p := Price{l, h}
	return p, p.check("hourly-price")
}

func (p Price) check(field string) error {
	if !(p.Low > 0) || !(p.High >= p.Low) || math.IsInf(p.High, 0) {
		return fmt.Errorf("%w: %s: %v must be positive (and low <= high)", ErrInput, field, p)
	}
	return nil
}

func (p Price) scale(f float64) Price { return Price{p.Low * f, p.High * f} }

// String prints "$9.60" or "$10.00–13.00".
func (p Price) String() string {
	if p.Low == p.High {
		return fmt.Sprintf("$%.2f", p.Low)
	}
	return fmt.Sprintf("$%.2f–%.2f", p.Low, p.High)
}

// Option is one way to run a replica: a GKE machine type, what it serves, and its price.
type Option struct {
	// Key names the configuration in --result KEY=FILE (h100, v5e-4, v5e-4-int8, v5e-8): a
	// result is priced only on the configuration it was measured on.
	Key         string
	Machine     string // GKE machine type
	Accelerator string
	Pricing     string // on-demand, spot
	Hourly      Price
	// Serving is the model configuration the key stands for, when the hardware alone does not
	// say it (the same machine priced once per weight format).
	Serving string
}

// Catalogue is the migration report's price list (USD per hour per replica, list prices,
// us-central1-like regions): the H100 baseline, and TPU v5e-4 and v5e-8, on demand and Spot.
// v5e-4-int8 is the same ct5lp-hightpu-4t at the same prices serving Gemma 3 27B with int8
// weights at TP 4 (serve --quantization int8 --tensor-parallel-size 4): with bf16 weights
// 27B takes 12.6 GiB of each 16 GiB chip and leaves (almost) no KV cache, with int8 6.6 GiB
// (tpuserve plan --model gemma3-27b --tp 4 --quantization int8). Its own key keeps a bf16
// result on the v5e-4 from being priced as the int8 configuration, or the reverse.
var Catalogue = []Option{
	{"h100", "a3-highgpu-1g", "1x NVIDIA H100 80GB", "on-demand", Price{10, 13}, ""},
	{"v5e-4", "ct5lp-hightpu-4t", "4x TPU v5e (2x2)", "on-demand", Fixed(4.80), ""},
	{"v5e-4", "ct5lp-hightpu-4t", "4x TPU v5e (2x2)", "spot", Fixed(1.00), ""},
	{"v5e-4-int8", "ct5lp-hightpu-4t", "4x TPU v5e (2x2)", "on-demand", Fixed(4.80), "27B int8, TP 4"},
	{"v5e-4-int8", "ct5lp-hightpu-4t", "4x TPU v5e (2x2)", "spot", Fixed(1.00), "27B int8, TP 4"},
	{"v5e-8", "ct5lp-hightpu-8t", "8x TPU v5e (2x4)", "on-demand", Fixed(9.60), ""},
	{"v5e-8", "ct5lp-hightpu-8t", "8x TPU v5e (2x4)", "spot", Fixed(2.00), ""},
}

// CatalogueKeys are the catalogue's keys, in catalogue order.
func CatalogueKeys() []string {
	var keys []string
	for _, o := range Catalogue {
		if len(keys) == 0 || keys[len(keys)-1] != o.Key {
			keys = append(keys, o.Key)
		}
	}
	return keys
}

// label is the hardware column: the accelerator and, when set, what it serves.
func (o Option) label() string {
	if o.Serving == "" {
		return o.Accelerator
	}
	return o.Accelerator + ", " + o.Serving
}

// Throughput is what one replica sustains, in tokens per second.
type Throughput struct {
	Output, Total float64
}

func (t Throughput) check() error {
	if !(t.Output > 0) || !(t.Total >= t.Output) || math.IsInf(t.Total, 0) {
		return fmt.Errorf("%w: throughput: output %v and total %v tokens/s must be positive, total >= output", ErrInput, t.Output, t.Total)
	}
	return nil
}

// Estimate is the cost of one option at one throughput.
type Estimate struct {
	Hourly Price
	// PerMillionOutput and PerMillionTotal are USD per 1M output / total tokens at full use.
	PerMillionOutput, PerMillionTotal Price
	// Replicas needed for the load (0 when no load was given) and their monthly cost.
	Replicas int
	Monthly  Price
}

// Compute estimates cost for one replica type at throughput t; loadOutputTPS > 0 sizes a
// fleet for that average output token rate over hoursPerMonth hours.
func Compute(hourly Price, t Throughput, loadOutputTPS, hoursPerMonth float64) (Estimate, error) {
	if err := hourly.check("hourly-price"); err != nil {
		return Estimate{}, err
	}
	if err := t.check(); err != nil {
		return Estimate{}, err
	}
	if loadOutputTPS < 0 || math.IsNaN(loadOutputTPS) || math.IsInf(loadOutputTPS, 0) {
		return Estimate{}, fmt.Errorf("%w: load-tps: %v must not be negative", ErrInput, loadOutputTPS)
	}
	if !(hoursPerMonth > 0) || hoursPerMonth > 744 {
		return Estimate{}, fmt.Errorf("%w: hours-per-month: %v must be in (0, 744]", ErrInput, hoursPerMonth)
	}
	e := Estimate{
		Hourly:           hourly,
		PerMillionOutput: hourly.scale(1e6 / (t.Output * 3600)),
		PerMillionTotal:  hourly.scale(1e6 / (t.Total * 3600)),
	}
	if loadOutputTPS > 0 {
		e.Replicas = int(math.Ceil(loadOutputTPS / t.Output))
		e.Monthly = hourly.scale(float64(e.Replicas) * hoursPerMonth)
	} else {
		e.Replicas = 1
		e.Monthly = hourly.scale(hoursPerMonth)
	}
	return e, nil
}

// Row is one line of a catalogue report: an option and, when a result for its hardware
// was given, its estimate.
type Row struct {
	Option   Option
	Estimate *Estimate
}

// CatalogueReport computes an estimate for every catalogue option whose hardware key has a
// measured throughput in byKey. Keys of byKey must exist in the catalogue.
func CatalogueReport(byKey map[string]Throughput, loadOutputTPS, hoursPerMonth float64) ([]Row, error) {
	known := map[string]bool{}
	for _, o := range Catalogue {
		known[o.Key] = true
	}
	for k := range byKey {
		if !known[k] {
			return nil, fmt.Errorf("%w: result: unknown hardware %q (want one of %s)", ErrInput, k, strings.Join(CatalogueKeys(), ", "))
		}
	}
	var rows []Row
	for _, o := range Catalogue {
		r := Row{Option: o}
		if t, ok := byKey[o.Key]; ok {
			e, err := Compute(o.Hourly, t, loadOutputTPS, hoursPerMonth)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", o.Key, err)
			}
			r.Estimate = &e
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// WriteTable prints rows as an aligned table; throughput columns show "-" where no
// result was given.
func WriteTable(w io.Writer, rows []Row, byKey map[string]Throughput, loadOutputTPS float64) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	load := "1 replica"
	if loadOutputTPS > 0 {
		load = fmt.Sprintf("%g out tok/s", loadOutputTPS)
	}
	fmt.Fprintf(tw, "hardware\tmachine\tpricing\t$/h\tout tok/s\t$/1M out\t$/1M total\treplicas\t$/month (%s)\n", load)
	for _, r := range rows {
		o := r.Option
		if r.Estimate == nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\n", o.label(), o.Machine, o.Pricing, o.Hourly)
			continue
		}
		e := r.Estimate
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t%d\t%s\n", o.label(), o.Machine, o.Pricing, o.Hourly,
			byKey[o.Key].Output, e.PerMillionOutput, e.PerMillionTotal, e.Replicas, e.Monthly)
	}
	return tw.Flush()
}
