from asynccorr.cli import main

main()
