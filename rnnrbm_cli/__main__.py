from rnnrbm_cli.cli import main

main()
