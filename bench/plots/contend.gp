# contend.gp - fault throughput while another thread invalidates ("contend").
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/contend.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "contend.gp: no ".f; exit }
set datafile separator ","
set terminal pngcairo size 900,540 font ",10"
set output outdir."/contend.png"
set title "2 MiB faults on a 64 MiB region while another thread invalidates it (anywhere, or only the other half)"
set logscale x
set xrange [500:200000]
set yrange [0:*]
set xlabel "invalidations per second (the unpaced run is not plotted)"
set ylabel "fault throughput / throughput without invalidations"
set key bottom left
set grid
plot "< grep -F ',fault under invalidation,' '".f."'" using ($4 > 0 ? $4 : NaN):16 w lp lw 2 pt 7 title "2 MiB invalidations anywhere (median of alternating 100 ms slices)", \
     "< grep -F ',fault other half,' '".f."'" using ($4 > 0 ? $4 : NaN):16 w p pt 9 ps 2 title "64 KiB invalidations of the other half (per-stripe sequences)"
