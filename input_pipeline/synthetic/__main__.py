from input_pipeline.synthetic.export import main

main()
