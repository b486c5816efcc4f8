from orgsyncd.cli import main

main()
