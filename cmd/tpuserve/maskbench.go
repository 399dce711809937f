package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"time"

	"github.com/tpuserve/tpuserve/engine/grammar"
	"github.com/tpuserve/tpuserve/engine/grammar/maskbench"
)

func init() {
	register("maskbench", "MaskBench's structured-output mask benchmark: one JSON line per schema file (--tokenizer DIR FILE.json...)", runMaskBench)
}

func runMaskBench(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("maskbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := tokenizerFlag(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "per-schema time limit (a schema past it is reported with timed_out; 0: none)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("no MaskBench files given")
	}
	tok, err := loadTokenizer(*path)
	if err != nil {
		return err
	}
	vocab, err := grammar.VocabularyFromTokenizer(tok)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := vocab.Warm(); err != nil {
		return err
	}
	slog.Info("maskbench: vocabulary ready", "tokens", vocab.Size(), "warm", time.Since(t0))
	encode := func(text string) []int32 { return tok.EncodeLiteral(text, false) }
	enc := json.NewEncoder(stdout)
	for _, file := range fs.Args() {
		res, err := runOneMaskBench(vocab, encode, file, *timeout)
		if err != nil {
			slog.Error("maskbench: skipping file", "file", file, "err", err)
			continue
		}
		if err := enc.Encode(res); err != nil {
			return err
		}
	}
	return nil
}

// runOneMaskBench runs one file, giving up after timeout. The token loop stops at the
// deadline itself; a compile or first mask that overruns is abandoned (its goroutine
// finishes in the background) and reported as timed out.
func runOneMaskBench(v *grammar.Vocabulary, encode maskbench.Encoder, file string, timeout time.Duration) (*maskbench.Result, error) {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	type outcome struct {
		res *maskbench.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		// An engine panic is reported as this file's error rather than ending the run.
		defer func() {
			if p := recover(); p != nil {
				done <- outcome{&maskbench.Result{ID: baseName(file), MaskMicros: []int64{},
					CompileError: fmt.Sprintf("panic: %v", p)}, nil}
			}
		}()
		r, err := maskbench.Run(v, encode, file, deadline)
		done <- outcome{r, err}
	}()
	if timeout <= 0 {
		o := <-done
		return o.res, o.err
	}
	timer := time.NewTimer(timeout + time.Second)
	defer timer.Stop()
	select {
	case o := <-done:
		return o.res, o.err
	case <-timer.C:
		return &maskbench.Result{ID: baseName(file), TimedOut: true, MaskMicros: []int64{},
			CompileError: fmt.Sprintf("timed out after %v compiling or computing the first mask", timeout)}, nil
	}
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}
