from ccidgadget.cli import main

raise SystemExit(main())
