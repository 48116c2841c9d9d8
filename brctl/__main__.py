from brctl._cli import main

main()
