# mem.gp - translation memory per mapped page vs mapping density ("mem").
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/mem.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "mem.gp: no ".f; exit }
set datafile separator ","
set terminal pngcairo size 900,540 font ",10"
set output outdir."/mem.png"
set title "Translation-table bytes per mapped page (1 GiB region, read-mapped)"
set logscale xy
set logscale x 2
set xtics ("4 KiB" 4096, "16 KiB" 16384, "64 KiB" 65536, "256 KiB" 2**18, "1 MiB" 2**20, "2 MiB" 2**21)
set format y "%g"
set xlabel "distance between mapped pages (bytes)"
set ylabel "bytes per mapped page"
set key top left
set grid
plot "< grep -F ',mapped page' '".f."'" using 4:7 w lp lw 2 pt 7 title "uodp", \
     16 with lines dt 2 lc rgb "red" title "target 16 B (= the seed's two arrays, any page)"
