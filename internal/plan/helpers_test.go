package plan_test

import (
	"testing"

	"github.com/tpuserve/tpuserve/model"
)

func preset(t testing.TB, name string) model.Config {
	t.Helper()
	c, err := model.Preset(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
