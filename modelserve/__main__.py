from modelserve.cli import main

main()
