from exptorch.cli import main

main()
