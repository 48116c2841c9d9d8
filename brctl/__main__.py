from brctl._entry import main

main()
