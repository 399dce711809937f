package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/tpuserve/tpuserve/internal/bench"
	"github.com/tpuserve/tpuserve/internal/cost"
)

func init() {
	register("cost", "$ per 1M tokens and monthly cost from a bench result (--result-json, --hourly-price, --catalogue)", runCost)
}

func runCost(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cost", flag.ContinueOnError)
	fs.SetOutput(stderr)
	resultJSON := fs.String("result-json", "", "result JSON of tpuserve bench (or vllm bench serve)")
	price := fs.String("hourly-price", "", "USD per hour per replica, or a range like 10-13")
	catalogue := fs.Bool("catalogue", false, "print the migration report's price list (H100, v5e-4, v5e-4 with 27B int8, v5e-8; on-demand and Spot)")
	var results multiFlag
	fs.Var(&results, "result", "KEY=FILE: a result measured on catalogue configuration KEY ("+strings.Join(cost.CatalogueKeys(), ", ")+"); repeatable")
	load := fs.Float64("load-tps", 0, "average output tokens per second to serve (sizes replicas for the monthly cost; 0: one replica)")
	hours := fs.Float64("hours-per-month", cost.HoursPerMonth, "billed hours per month")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *resultJSON == "" && !*catalogue {
		return fmt.Errorf("give --result-json FILE --hourly-price USD, or --catalogue [--result KEY=FILE ...]")
	}

	if *resultJSON != "" {
		if *price == "" {
			return fmt.Errorf("--result-json needs --hourly-price")
		}
		p, err := cost.ParsePrice(*price)
		if err != nil {
			return err
		}
		s, err := bench.ReadFileSummary(*resultJSON)
		if err != nil {
			return err
		}
		e, err := cost.Compute(p, cost.Throughput{Output: s.OutputThroughput, Total: s.TotalTokenThroughput}, *load, *hours)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "result:                 %s (%s, %d requests in %.1f s)\n", *resultJSON, s.ModelID, s.Completed, s.Duration)
		fmt.Fprintf(stdout, "throughput:             %.1f output tok/s, %.1f total tok/s, %.2f req/s\n", s.OutputThroughput, s.TotalTokenThroughput, s.RequestThroughput)
		fmt.Fprintf(stdout, "latency:                mean TTFT %.1f ms, mean TPOT %.1f ms\n", s.MeanTTFTMs, s.MeanTPOTMs)
		fmt.Fprintf(stdout, "price:                  %s per replica-hour\n", e.Hourly)
		fmt.Fprintf(stdout, "$ per 1M output tokens: %s\n", e.PerMillionOutput)
		fmt.Fprintf(stdout, "$ per 1M total tokens:  %s\n", e.PerMillionTotal)
		if *load > 0 {
			fmt.Fprintf(stdout, "monthly at %g out tok/s: %d replicas, %s (%g h)\n", *load, e.Replicas, e.Monthly, *hours)
		} else {
			fmt.Fprintf(stdout, "monthly, one replica:   %s (%g h)\n", e.Monthly, *hours)
		}
	}

	if *catalogue {
		byKey := map[string]cost.Throughput{}
		for _, r := range results {
			key, file, ok := strings.Cut(r, "=")
			if !ok {
				return fmt.Errorf("--result: %q is not KEY=FILE", r)
			}
			s, err := bench.ReadFileSummary(file)
			if err != nil {
				return err
			}
			byKey[key] = cost.Throughput{Output: s.OutputThroughput, Total: s.TotalTokenThroughput}
		}
		rows, err := cost.CatalogueReport(byKey, *load, *hours)
		if err != nil {
			return err
		}
		if *resultJSON != "" {
			fmt.Fprintln(stdout)
		}
		return cost.WriteTable(stdout, rows, byKey, *load)
	}
	return nil
}
