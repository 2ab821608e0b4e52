"""benchmarks/weight_grad_layout.py runs and times both layouts of the cells it is given."""

from benchmarks.weight_grad_layout import main


def test_grid_cells_time_both_layouts(capsys):
    grid = main(["--tokens", "64", "--repeats", "1", "--rows", "128", "--cols", "64,2048"])
    assert set(grid) == {(128, 64), (128, 2048)}
    assert all(t_plain > 0 and t_copy > 0 for t_plain, t_copy in grid.values())
    out = capsys.readouterr().out
    assert "| 128 |" in out and ")*" in out  # the (128, 2048) cell is marked: the layout the CPU path picks
