-- What a waiting upload is told: how many cutouts are ahead of it, and how fast they have been going. Items whose
-- cutout is done keep stage 'analyze' (it only moves on to finished), and run_after records when the cutout ended.
CREATE INDEX jobs_cutouts_done ON jobs (run_after) WHERE kind = 'process_item' AND stage = 'analyze';
